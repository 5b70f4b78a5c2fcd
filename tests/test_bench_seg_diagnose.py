"""bench.seg_diagnose: every missed truth pixel is charged to exactly one cause."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.seg_diagnose import CAUSES, diagnose
from stream.mask_detect import MaskDetectOptions
from stream.testclip import ClipTruth


@pytest.fixture(scope="module")
def clip(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    return make_clip("clean.mp4", duration_s=1.0, occluder=False)


def test_missed_pixels_are_split_by_cause(clip: ClipTruth, tmp_path: Path) -> None:
    result = diagnose(clip.path, tmp_path, 12, MaskDetectOptions(), sheet_frames=2)
    assert result["frames"] == 12 and len(result["per_frame"]) == 12
    assert (tmp_path / f"{clip.path.stem}.shipped.png").is_file()
    assert (tmp_path / f"{clip.path.stem}.shipped.json").is_file()
    lost = sum(result["lost_share"][c] for c in CAUSES)
    # The causes partition what the restored region misses.
    assert lost == pytest.approx(1.0 - result["recall"], abs=2e-3)
    assert result["recall"] > 0.8  # a generated face with a painted mask is found
    # A face that is never decided covered loses everything to the decision.
    never = MaskDetectOptions(covered_fraction=1.0)
    blocked = diagnose(clip.path, tmp_path / "never", 12, never, sheet_frames=1)
    assert blocked["recall"] == 0.0 and blocked["frames_covered"] == 0
    assert blocked["lost_share"]["decision"] > 0.8
    assert blocked["lost_share"]["decision"] == pytest.approx(
        1.0 - sum(blocked["lost_share"][c] for c in CAUSES if c != "decision"), abs=2e-3
    )
    # The painted clip is made once per folder and reused: the same frames, the same numbers.
    painted = tmp_path / f"{clip.path.stem}_masked.mp4"
    made = painted.stat().st_mtime_ns
    again = diagnose(clip.path, tmp_path, 12, MaskDetectOptions(), sheet_frames=2)
    assert painted.stat().st_mtime_ns == made
    assert again["recall"] == result["recall"] and again["lost_share"] == result["lost_share"]
