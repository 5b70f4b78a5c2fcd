"""The synthetic talking-head clip: its file matches its truth, and YuNet agrees with it."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from stream import testclip
from stream.detect import FaceDetector, yunet_model_path
from stream.testclip import (
    ClipSpec,
    ClipTruth,
    MultiClipSpec,
    MultiClipTruth,
    make_multi_face_clip,
    make_talking_head_clip,
)

pytest.importorskip("skimage")

_YUNET = yunet_model_path()


@pytest.fixture(scope="module")
def masked_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    """The default clip: 4 s, 640x480, 25 fps, occluder and speech."""
    return make_talking_head_clip(tmp_path_factory.mktemp("masked") / "clip.mp4", ClipSpec())


@pytest.fixture(scope="module")
def bare_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    spec = ClipSpec(duration_s=2.0, occluder=False, audio=False, seed=3)
    return make_talking_head_clip(tmp_path_factory.mktemp("bare") / "clip.mkv", spec)


@pytest.fixture(scope="module")
def odd_vfr_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    spec = ClipSpec(width=641, height=479, duration_s=2.0, vfr=True, seed=5)
    return make_talking_head_clip(tmp_path_factory.mktemp("odd") / "clip.mp4", spec)


def _decode_video(path: Path) -> tuple[list[npt.NDArray[np.uint8]], list[Fraction]]:
    """BGR frames and their presentation times in seconds (exact fractions)."""
    images: list[npt.NDArray[np.uint8]] = []
    times: list[Fraction] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            assert frame.pts is not None and frame.time_base is not None
            images.append(np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8))
            times.append(Fraction(frame.pts) * frame.time_base)
    return images, times


def _truth_times(truth: ClipTruth) -> list[Fraction]:
    return [p * truth.time_base for p in truth.pts]


def _yunet_best(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32] | None:
    height, width = image.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(_YUNET), "", (width, height), 0.6, 0.3, 50)
    _, rows = detector.detect(image)
    if rows is None or len(rows) == 0:
        return None
    return np.asarray(max(rows, key=lambda row: float(row[14])), dtype=np.float32)


def _sampled(n: int) -> list[int]:
    return sorted({0, n // 3, (2 * n) // 3, n - 1})


def test_truth_arrays_have_the_documented_shapes(masked_clip: ClipTruth) -> None:
    n = masked_clip.frame_count
    assert n == 100
    assert masked_clip.path.is_file()
    assert masked_clip.time_base == Fraction(1, 25)
    assert masked_clip.pts == tuple(range(100))
    assert masked_clip.landmarks5.shape == (n, 5, 2)
    assert masked_clip.landmarks5.dtype == np.float64
    assert masked_clip.face_boxes.shape == (n, 4)
    assert masked_clip.occluder_masks.shape == (n, 480, 640)
    assert masked_clip.occluder_masks.dtype == np.bool_
    assert masked_clip.audio_sample_rate_hz == 16_000
    assert np.isfinite(masked_clip.landmarks5).all()


def test_decoded_frames_and_pts_match_truth(masked_clip: ClipTruth) -> None:
    images, times = _decode_video(masked_clip.path)
    assert len(images) == masked_clip.frame_count
    # The muxer may pick its own time base (mp4 uses 1/12800), so compare in seconds.
    assert times == _truth_times(masked_clip)
    assert images[0].shape == (480, 640, 3)


def test_audio_is_aac_mono_and_as_long_as_the_video(masked_clip: ClipTruth) -> None:
    with av.open(str(masked_clip.path)) as container:
        assert len(container.streams.audio) == 1
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.codec_context.sample_rate == masked_clip.audio_sample_rate_hz
        assert stream.codec_context.channels == 1
        samples = sum(frame.samples for frame in container.decode(audio=0))
    video_s = masked_clip.frame_count / 25
    assert samples / 16_000 == pytest.approx(video_s, abs=0.1)


def test_audio_is_speech_not_silence(masked_clip: ClipTruth) -> None:
    with av.open(str(masked_clip.path)) as container:
        chunks = [
            np.asarray(f.to_ndarray(), dtype=np.float64).reshape(-1)
            for f in container.decode(audio=0)
        ]
    audio = np.concatenate(chunks)
    assert float(np.sqrt(np.mean(audio**2))) > 0.01


def test_no_audio_stream_without_audio(bare_clip: ClipTruth) -> None:
    assert bare_clip.audio_sample_rate_hz is None
    with av.open(str(bare_clip.path)) as container:
        assert len(container.streams.audio) == 0
        assert len(container.streams.video) == 1


def test_mkv_clip_decodes_with_truth_pts(bare_clip: ClipTruth) -> None:
    images, times = _decode_video(bare_clip.path)
    assert len(images) == bare_clip.frame_count == 50
    assert times == _truth_times(bare_clip)


def test_odd_size_decodes_at_that_size(odd_vfr_clip: ClipTruth) -> None:
    images, _ = _decode_video(odd_vfr_clip.path)
    assert {image.shape for image in images} == {(479, 641, 3)}
    assert odd_vfr_clip.occluder_masks.shape[1:] == (479, 641)
    with av.open(str(odd_vfr_clip.path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_vfr_pts_are_irregular_and_match_truth(odd_vfr_clip: ClipTruth) -> None:
    assert odd_vfr_clip.time_base == Fraction(1, 1000)
    steps = np.diff(odd_vfr_clip.pts)
    assert set(steps.tolist()) <= {30, 40, 50, 60}
    assert len(set(steps.tolist())) >= 3
    assert odd_vfr_clip.pts[0] == 0
    assert odd_vfr_clip.pts[-1] < 2000
    _, times = _decode_video(odd_vfr_clip.path)
    assert times == _truth_times(odd_vfr_clip)


def test_vfr_audio_matches_video_end(odd_vfr_clip: ClipTruth) -> None:
    with av.open(str(odd_vfr_clip.path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    last_s = float(odd_vfr_clip.pts[-1] * odd_vfr_clip.time_base)
    assert last_s < samples / 16_000 <= last_s + 0.06 + 0.1


@pytest.mark.parametrize("occluded", [False, True], ids=["bare", "masked"])
def test_yunet_finds_the_true_face(
    occluded: bool, masked_clip: ClipTruth, bare_clip: ClipTruth
) -> None:
    truth = masked_clip if occluded else bare_clip
    images, _ = _decode_video(truth.path)
    for i in _sampled(truth.frame_count):
        row = _yunet_best(images[i])
        assert row is not None, f"no face in frame {i}"
        assert row[14] >= 0.6
        errors = np.linalg.norm(row[4:14].reshape(5, 2) - truth.landmarks5[i], axis=1)
        if occluded:
            # Under the mask YuNet can only guess the mouth corners; eyes and nose must hold.
            assert errors[:3].mean() < 8.0, f"frame {i}: {errors.round(1)}"
            assert errors.mean() < 12.0, f"frame {i}: {errors.round(1)}"
        else:
            assert errors.mean() < 8.0, f"frame {i}: {errors.round(1)}"
        box_centre = row[:2] + row[2:4] / 2
        true_centre = truth.face_boxes[i, :2] + truth.face_boxes[i, 2:] / 2
        assert np.linalg.norm(box_centre - true_centre) < 0.1 * truth.face_boxes[i, 3]


def test_odd_vfr_clip_face_is_detected(odd_vfr_clip: ClipTruth) -> None:
    images, _ = _decode_video(odd_vfr_clip.path)
    for i in _sampled(odd_vfr_clip.frame_count):
        row = _yunet_best(images[i])
        assert row is not None and row[14] >= 0.6, f"frame {i}"


def test_face_moves_scales_and_rolls(masked_clip: ClipTruth) -> None:
    eyes = masked_clip.landmarks5[:, :2]
    centre = masked_clip.face_boxes[:, :2] + masked_clip.face_boxes[:, 2:] / 2
    assert np.ptp(centre[:, 0]) > 5.0
    assert np.ptp(centre[:, 1]) > 5.0
    assert np.ptp(masked_clip.face_boxes[:, 3]) > 2.0
    roll = np.degrees(np.arctan2(*(eyes[:, 1] - eyes[:, 0]).T[::-1]))
    assert np.ptp(roll) > 1.0
    # Smooth: no jumps between neighbouring frames.
    assert np.abs(np.diff(centre, axis=0)).max() < 5.0
    assert 200 <= masked_clip.face_boxes[:, 3].mean() <= 250


def test_occluder_covers_lower_face_only(masked_clip: ClipTruth) -> None:
    images, _ = _decode_video(masked_clip.path)
    for i in range(masked_clip.frame_count):
        mask = masked_clip.occluder_masks[i]
        assert mask.any(), f"frame {i}"
        x, y, w, h = masked_clip.face_boxes[i]
        rows, cols = np.nonzero(mask)
        assert rows.min() >= y + h / 2, f"frame {i}: mask reaches the upper face"
        assert x <= cols.mean() <= x + w
        eyes = masked_clip.landmarks5[i, :2]
        assert rows.min() > eyes[:, 1].max() + 0.15 * h
    # The recorded pixels are the drawn ones: inside the mask the frame is mask-coloured.
    eroded = cv2.erode(masked_clip.occluder_masks[0].astype(np.uint8), np.ones((5, 5))) > 0
    colours = images[0][eroded].astype(np.float64)
    assert np.median(colours, axis=0) == pytest.approx([226, 200, 150], abs=8)


def test_without_face_there_is_nothing_to_find(tmp_path: Path) -> None:
    spec = ClipSpec(duration_s=1.0, face=False, audio=False)
    truth = make_talking_head_clip(tmp_path / "empty.mp4", spec)
    assert np.isnan(truth.landmarks5).all()
    assert np.isnan(truth.face_boxes).all()
    assert not truth.occluder_masks.any()
    images, _ = _decode_video(truth.path)
    assert len(images) == truth.frame_count == 25
    for i in _sampled(truth.frame_count):
        assert _yunet_best(images[i]) is None, f"frame {i}"


def test_truth_is_deterministic(tmp_path: Path) -> None:
    spec = ClipSpec(duration_s=0.4, audio=False, vfr=True, seed=7)
    a = make_talking_head_clip(tmp_path / "a.mp4", spec)
    b = make_talking_head_clip(tmp_path / "b.mp4", spec)
    assert a.pts == b.pts
    assert np.array_equal(a.landmarks5, b.landmarks5)
    assert np.array_equal(a.face_boxes, b.face_boxes)
    assert np.array_equal(a.occluder_masks, b.occluder_masks)
    other = make_talking_head_clip(tmp_path / "c.mp4", ClipSpec(duration_s=0.4, audio=False))
    assert not np.array_equal(a.landmarks5[:1], other.landmarks5[:1])


def test_writes_atomically_leaving_only_the_output(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "clip.mp4"
    make_talking_head_clip(out, ClipSpec(duration_s=0.2, audio=False))
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]


def test_missing_espeak_is_a_runtime_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # testclip looks espeak-ng up with shutil.which; pretend it is not installed.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng"):
        make_talking_head_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=0.2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "spec",
    [ClipSpec(width=10), ClipSpec(fps=0), ClipSpec(duration_s=0.0), ClipSpec(crf=60)],
)
def test_impossible_specs_are_rejected(tmp_path: Path, spec: ClipSpec) -> None:
    with pytest.raises(ValueError):
        make_talking_head_clip(tmp_path / "clip.mp4", spec)


def test_cli_writes_a_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.mkv"
    argv = [str(out), "--duration-s", "0.5", "--width", "320", "--height", "240", "--no-audio"]
    assert testclip.main([*argv, "--vfr", "--seed", "2", "--no-occluder"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "cli.mkv" in printed[0]
    images, _ = _decode_video(out)
    assert images and images[0].shape == (240, 320, 3)


# --- several people ----------------------------------------------------------------------

_OCCLUDER_BGR = np.array([226, 200, 150], dtype=np.float64)


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> MultiClipTruth:
    """The default multi-face clip: 2.4 s 640x360, person 0 (nearest) masked, 1 not."""
    return make_multi_face_clip(tmp_path_factory.mktemp("two") / "clip.mp4", MultiClipSpec())


@pytest.fixture(scope="module")
def masked_behind(tmp_path_factory: pytest.TempPathFactory) -> MultiClipTruth:
    """The masked person is the far one, and the near head passes over part of the mask."""
    spec = MultiClipSpec(masked=(False, True), seed=2)
    return make_multi_face_clip(tmp_path_factory.mktemp("behind") / "clip.mp4", spec)


def _occluder_coloured(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Pixels within encoder noise of the occluder's light blue."""
    distance = np.abs(pixels.astype(np.float64) - _OCCLUDER_BGR).max(axis=-1)
    return np.asarray(distance < 16, dtype=np.bool_)


def _box_slice(box: npt.NDArray[np.float64], shape: tuple[int, ...]) -> tuple[slice, slice]:
    x, y, w, h = box
    x0, y0 = max(0, int(x)), max(0, int(y))
    return slice(y0, min(shape[0], int(y + h))), slice(x0, min(shape[1], int(x + w)))


def test_multi_truth_has_a_person_axis(two_people: MultiClipTruth) -> None:
    n = two_people.frame_count
    assert n == 60 and two_people.people == 2
    assert two_people.masked == (True, False)
    assert two_people.pts == tuple(range(60)) and two_people.time_base == Fraction(1, 25)
    assert two_people.landmarks5.shape == (n, 2, 5, 2)
    assert two_people.face_boxes.shape == (n, 2, 4)
    assert two_people.occluder_masks.shape == (n, 2, 360, 640)
    assert two_people.face_visibility.shape == (n, 2)
    assert np.isfinite(two_people.landmarks5).all() and np.isfinite(two_people.face_boxes).all()
    assert two_people.audio_sample_rate_hz is None
    assert two_people.occluder_masks[:, 0].any(axis=(1, 2)).all()
    assert not two_people.occluder_masks[:, 1].any()
    images, times = _decode_video(two_people.path)
    assert len(images) == n and images[0].shape == (360, 640, 3)
    assert times == _truth_times(two_people.person(0))


def test_person_view_is_the_single_face_truth(two_people: MultiClipTruth) -> None:
    one = two_people.person(1)
    assert isinstance(one, ClipTruth)
    assert np.array_equal(one.face_boxes, two_people.face_boxes[:, 1])
    assert np.array_equal(one.landmarks5, two_people.landmarks5[:, 1])
    assert np.array_equal(one.occluder_masks, two_people.occluder_masks[:, 1])
    assert one.pts == two_people.pts and one.path == two_people.path


def test_faces_cross_each_other(two_people: MultiClipTruth) -> None:
    boxes = two_people.face_boxes
    centre = boxes[:, :, :2] + boxes[:, :, 2:] / 2
    left_to_right = centre[:, 0, 0] < centre[:, 1, 0]
    assert left_to_right[0] and not left_to_right[-1]
    assert np.count_nonzero(np.diff(left_to_right.astype(int))) == 1, "one clean swap"
    # They pass close: at the crossing the centres are within about two face heights.
    gap = np.linalg.norm(centre[:, 0] - centre[:, 1], axis=1)
    assert gap.min() < 2.0 * boxes[:, :, 3].mean()
    # Smooth motion, and each person moves a long way.
    assert np.abs(np.diff(centre, axis=0)).max() < 10.0
    assert (np.ptp(centre[:, :, 0], axis=0) > 200).all()
    # Different sizes: the near person is larger.
    assert boxes[:, 0, 3].mean() > 1.1 * boxes[:, 1, 3].mean()


def test_multi_truth_matches_the_pixels(two_people: MultiClipTruth) -> None:
    images, _ = _decode_video(two_people.path)
    for i, image in enumerate(images):
        mask = two_people.occluder_masks[i, 0]
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        # Pleat lines are darker, so most rather than all inner pixels are the light blue.
        assert _occluder_coloured(image[inner]).mean() > 0.8, f"frame {i}"
        # The unmasked face shows no occluder paint (outside the other person's mask).
        region = _box_slice(two_people.face_boxes[i, 1], mask.shape)
        bare = image[region][~mask[region]]
        assert _occluder_coloured(bare).mean() < 0.01, f"frame {i}"


def test_masks_and_visibility_follow_depth(masked_behind: MultiClipTruth) -> None:
    masks = masked_behind.occluder_masks
    assert not (masks[:, 0] & masks[:, 1]).any()
    assert (masked_behind.face_visibility[:, 0] == 1.0).all()
    far = masked_behind.face_visibility[:, 1]
    assert far.min() < 0.9, "the near head passes over the far face"
    assert far.max() == 1.0
    # Where the near head hides part of the mask, the truth keeps only what is seen: the
    # mask's area dips at the crossing although the far face keeps its size.
    area = masks[:, 1].sum(axis=(1, 2)).astype(np.float64)
    hidden = int(np.argmin(far))
    assert area[hidden] < 0.9 * np.median(area)
    image = _decode_video(masked_behind.path)[0][hidden]
    # Truth pixels are at least half paint, so most still read as the light blue; the
    # painted pixels the near head hides do not.
    inner = cv2.erode(masks[hidden, 1].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert _occluder_coloured(image[inner]).mean() > 0.65
    painted = testclip._occluder_mask(masked_behind.landmarks5[hidden, 1], 640, 360)
    assert (masks[hidden, 1] <= painted).all()
    out_of_sight = painted & ~masks[hidden, 1]
    assert out_of_sight.sum() > 0.1 * painted.sum()
    assert _occluder_coloured(image[out_of_sight]).mean() < 0.2


@pytest.mark.parametrize("clip_name", ["two_people", "masked_behind"])
def test_yunet_finds_both_faces(clip_name: str, request: pytest.FixtureRequest) -> None:
    truth: MultiClipTruth = request.getfixturevalue(clip_name)
    detector = FaceDetector()
    images, _ = _decode_video(truth.path)
    found = np.zeros((truth.frame_count, truth.people), dtype=bool)
    for i, image in enumerate(images):
        faces = detector.detect(image)
        for p in range(truth.people):
            x, y, w, h = truth.face_boxes[i, p]
            for face in faces:
                fx, fy, fw, fh = face.box
                near = np.hypot(fx + fw / 2 - x - w / 2, fy + fh / 2 - y - h / 2) < 0.25 * h
                if near and 0.7 < fh / h < 1.4:
                    found[i, p] = True
    assert (found.mean(axis=0) >= 0.9).all(), found.mean(axis=0)


def test_people_look_different(two_people: MultiClipTruth) -> None:
    images, _ = _decode_video(two_people.path)
    means = []
    for p in range(2):
        # The upper half of the face box: above any occluder.
        x, y, w, h = two_people.face_boxes[0, p]
        upper = images[0][
            int(y + 0.15 * h) : int(y + 0.45 * h), int(x + 0.2 * w) : int(x + 0.8 * w)
        ]
        means.append(upper.reshape(-1, 3).mean(axis=0))
    assert np.abs(means[0] - means[1]).max() > 10.0


def test_multi_truth_is_deterministic(tmp_path: Path) -> None:
    spec = MultiClipSpec(duration_s=0.4, seed=4, masked=(True, True))
    a = make_multi_face_clip(tmp_path / "a.mp4", spec)
    b = make_multi_face_clip(tmp_path / "b.mp4", spec)
    assert np.array_equal(a.face_boxes, b.face_boxes)
    assert np.array_equal(a.landmarks5, b.landmarks5)
    assert np.array_equal(a.occluder_masks, b.occluder_masks)
    assert np.array_equal(a.face_visibility, b.face_visibility)
    assert a.occluder_masks[:, 1].any() and a.masked == (True, True)
    other = make_multi_face_clip(tmp_path / "c.mp4", MultiClipSpec(duration_s=0.4, seed=5))
    assert not np.array_equal(a.face_boxes, other.face_boxes)


def test_three_people(tmp_path: Path) -> None:
    spec = MultiClipSpec(duration_s=0.4, people=3, masked=(False, True, False))
    truth = make_multi_face_clip(tmp_path / "three.mp4", spec)
    assert truth.face_boxes.shape == (10, 3, 4)
    assert [bool(truth.occluder_masks[:, p].any()) for p in range(3)] == [False, True, False]


@pytest.mark.parametrize(
    "spec",
    [
        MultiClipSpec(people=0),
        MultiClipSpec(people=testclip.MAX_PEOPLE + 1),
        MultiClipSpec(people=2, masked=(True,)),
        MultiClipSpec(width=32),
        MultiClipSpec(duration_s=0.0),
    ],
)
def test_impossible_multi_specs_are_rejected(tmp_path: Path, spec: MultiClipSpec) -> None:
    with pytest.raises(ValueError):
        make_multi_face_clip(tmp_path / "clip.mp4", spec)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_multi_face_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "people.mp4"
    argv = [str(out), "--people", "2", "--masked", "1", "--duration-s", "0.4", "--no-audio"]
    assert testclip.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "people=2 masked=1" in printed[0]
    images, _ = _decode_video(out)
    assert len(images) == 10 and images[0].shape == (360, 640, 3)
    assert testclip.main([str(tmp_path / "bad.mp4"), "--people", "2", "--masked", "2"]) == 1
    assert "--masked" in capsys.readouterr().err
