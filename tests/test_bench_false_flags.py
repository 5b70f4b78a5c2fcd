"""bench.false_flags on a generated clip: clean faces, the painted clip and the painted
frames cropped where the clean clip's faces were aligned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.false_flags import crop_like, evaluate, prepare
from stream.mask_detect import MaskDetectOptions
from stream.testclip import ClipTruth


@pytest.fixture(scope="module")
def clip(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    return make_clip("clean.mp4", duration_s=1.0, occluder=False)


def test_clean_alignment_scores_the_painted_frames_in_the_clean_crops(
    clip: ClipTruth, tmp_path: Path
) -> None:
    (item,) = prepare([clip.path], [0], 12, tmp_path, paint=True, clean_alignment=True)
    clean, ideal = item["clean"], item["painted_clean_alignment"]
    # The clean clip cropped under its own affines is its own cached crops.
    again = crop_like(clean, clip.path)
    assert np.abs(again["crops"].astype(int) - clean["crops"].astype(int)).max() <= 1
    # The painted frames under the clean affines: same faces, the occluder now in the crops.
    assert ideal["crops"].shape == clean["crops"].shape
    assert np.array_equal(ideal["inverse"], clean["inverse"])
    assert np.abs(ideal["crops"].astype(int) - clean["crops"].astype(int)).mean() > 5.0
    row = evaluate([item], MaskDetectOptions())["clips"][item["name"]]
    assert row["clean_flagged"] == 0.0
    for key in ("precision", "recall", "iou"):
        assert 0.0 <= row[f"{key}_clean_alignment"] <= 1.0
    # The occluder was painted in exactly those crops: nothing of it lies outside them.
    assert row["recall_clean_alignment"] > 0.9
