import numpy as np

from avinpaint import spec


def test_crop_template_places_eyes_above_and_mouth_inside_the_paper_hole() -> None:
    t = spec.CROP_TEMPLATE_256
    y0, y1 = spec.PAPER_HOLE_ROWS
    x0, x1 = spec.PAPER_HOLE_COLS
    eyes, nose, mouth = t[:2], t[2], t[3:]
    assert (eyes[:, 1] < y0).all(), "eyes must stay visible above the hole"
    assert y0 <= nose[1] < y1 and x0 <= nose[0] < x1
    assert ((mouth[:, 1] >= y0) & (mouth[:, 1] < y1)).all()
    assert ((mouth[:, 0] >= x0) & (mouth[:, 0] < x1)).all()
    np.testing.assert_allclose(eyes[:, 0], [88.0, 168.0], atol=0.1)
    np.testing.assert_allclose(eyes[:, 1].mean(), 78.0, atol=1e-9)


def test_crop_template_is_a_similarity_of_the_arcface_template() -> None:
    a = spec.ARCFACE_TEMPLATE_112
    b = spec.CROP_TEMPLATE_256
    da = np.linalg.norm(a[:, None] - a[None], axis=-1)
    db = np.linalg.norm(b[:, None] - b[None], axis=-1)
    ratio = db[da > 0] / da[da > 0]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


def test_paper_hole_is_the_official_128_box() -> None:
    assert spec.paper_hole_box() == (64, 89, 128, 128)
    assert spec.CROP_SIZE == 256
    assert (spec.AUDIO_SAMPLE_RATE_HZ, spec.N_MELS, spec.STFT_WIN_LENGTH) == (16000, 64, 400)
    assert (spec.STFT_HOP_LENGTH, spec.N_FFT, spec.SPEAKER_WINDOW_S) == (160, 1024, 6.0)
