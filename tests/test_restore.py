"""Per-track reuse of restored crops and the cross-fade."""

from __future__ import annotations

import numpy as np
import pytest

from stream.region import box_mask
from stream.restore import ReuseCache, ReuseOptions


def _crop(level: int) -> np.ndarray:
    rng = np.random.default_rng(level)
    base = rng.integers(0, 200, (256, 256, 3)).astype(np.int16)
    return np.clip(base + level, 0, 255).astype(np.uint8)


def test_reuses_while_the_visible_face_is_unchanged() -> None:
    cache = ReuseCache(ReuseOptions(change_levels=6.0, crossfade_frames=1))
    mask = box_mask()
    crop = _crop(0)
    assert not cache.reusable(1, crop, mask)  # unknown track
    face = np.full((256, 256, 3), 100, np.uint8)
    np.testing.assert_array_equal(cache.regenerated_crop(1, crop, mask, face), face)
    slightly = np.clip(crop.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    assert cache.reusable(1, slightly, mask)
    np.testing.assert_array_equal(cache.next_reused(1), face)
    brighter = np.clip(crop.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    assert not cache.reusable(1, brighter, mask)  # the visible face changed
    assert not cache.reusable(1, crop, box_mask((0, 0, 100, 100)))  # the region moved
    hidden_change = crop.copy()
    hidden_change[mask > 0] = 255  # changes only under the mask do not count
    assert cache.reusable(1, hidden_change, mask)
    assert (cache.reused, cache.regenerated) == (1, 1)


def test_max_age_forces_a_refresh_and_ended_tracks_are_forgotten() -> None:
    cache = ReuseCache(ReuseOptions(max_age_frames=3))
    mask, crop = box_mask(), _crop(0)
    cache.regenerated_crop(7, crop, mask, crop)
    for _ in range(3):
        assert cache.reusable(7, crop, mask)
        cache.next_reused(7)
    assert not cache.reusable(7, crop, mask)
    cache.keep_only(set())
    assert not cache.reusable(7, crop, mask)


def test_cross_fade_goes_from_the_old_crop_to_the_new_one() -> None:
    cache = ReuseCache(ReuseOptions(crossfade_frames=4))
    mask, crop = box_mask(), _crop(0)
    old = np.zeros((256, 256, 3), np.uint8)
    new = np.full((256, 256, 3), 200, np.uint8)
    cache.regenerated_crop(1, crop, mask, old)
    shown = [int(cache.regenerated_crop(1, crop, mask, new)[0, 0, 0])]
    shown += [int(cache.next_reused(1)[0, 0, 0]) for _ in range(4)]
    assert shown == [50, 100, 150, 200, 200]


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        ReuseOptions(change_levels=-1)
    with pytest.raises(ValueError):
        ReuseOptions(crossfade_frames=0)
