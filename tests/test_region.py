from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.errors import UsageError
from stream.region import box_mask, load_mask_image, parse_box


def test_default_box_is_the_paper_hole() -> None:
    m = box_mask()
    assert m.shape == (256, 256) and m.dtype == np.float32
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (89, 216, 64, 191)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,0,5", "200,200,100,10", "-1,0,5,5"])
def test_bad_boxes_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_box(text)


def test_parse_box() -> None:
    assert parse_box("10, 20,30,40") == (10, 20, 30, 40)


def test_mask_image(tmp_path: Path) -> None:
    img = np.zeros((256, 256), np.uint8)
    img[100:150, 50:60] = 255
    cv2.imwrite(str(tmp_path / "m.png"), img)
    m = load_mask_image(tmp_path / "m.png")
    assert m.sum() == 50 * 10
    cv2.imwrite(str(tmp_path / "small.png"), img[:100])
    with pytest.raises(UsageError, match="256x256"):
        load_mask_image(tmp_path / "small.png")
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((256, 256), np.uint8))
    with pytest.raises(UsageError, match="no pixels"):
        load_mask_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(UsageError, match="not a readable image"):
        load_mask_image(tmp_path / "junk.png")
    with pytest.raises(UsageError, match="not found"):
        load_mask_image(tmp_path / "missing.png")
