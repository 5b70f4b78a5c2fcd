import numpy as np
import pytest

from stream.inpaint import Inpainter, OpenCVInpainter
from stream.region import box_mask


def _gradient() -> np.ndarray:
    y, x = np.mgrid[0:256, 0:256]
    img = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(img)


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_fills_a_smooth_image_and_keeps_known_pixels(method: str) -> None:
    inpainter: Inpainter = OpenCVInpainter(method)  # type: ignore[arg-type]
    truth = _gradient()
    mask = box_mask((100, 100, 40, 40))
    damaged = truth.copy()
    damaged[mask > 0] = 0
    [result] = inpainter.inpaint([damaged], [mask])
    assert result.backend == f"opencv-{method}"
    assert result.latency_ms > 0
    np.testing.assert_array_equal(result.face_256[mask == 0], truth[mask == 0])
    error = np.abs(result.face_256.astype(int) - truth)[mask > 0].mean()
    assert error < 8.0, error  # a zeroed hole would be ~128 off


def test_batch_checks() -> None:
    inpainter = OpenCVInpainter()
    with pytest.raises(ValueError, match="masks"):
        inpainter.inpaint([_gradient()], [])
    with pytest.raises(ValueError, match="crop must be"):
        inpainter.inpaint([np.zeros((10, 10, 3), np.uint8)], [box_mask()])
    with pytest.raises(ValueError, match="unknown"):
        OpenCVInpainter("wavelet")  # type: ignore[arg-type]
    assert inpainter.inpaint([], []) == []
