"""The two crop networks' dataset preparation on real photos: scikit-image's astronaut (a
public-domain face) and a photo with no face in it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from avinpaint.spec import CROP_SIZE
from training import placement, segmenter


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared-data-like root: ``faces/lfw`` with one face and one faceless photo."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "faces" / "lfw"
    folder.mkdir(parents=True)
    astronaut = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "Eileen_Collins_0001.jpg"), astronaut)
    coins = cv2.cvtColor(skdata.coins(), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(folder / "No_Face_0001.jpg"), coins)
    return root


def test_segmenter_prepare_keeps_the_face_and_counts_the_miss(
    photo_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "faces"
    assert segmenter.prepare_faces(photo_root, out, ["faces/lfw"]) == 1
    index = json.loads((out / "index.json").read_text())
    assert index["misses"] == 1
    faces = segmenter.load_faces(out)
    assert faces.crops.shape == (1, CROP_SIZE, CROP_SIZE, 3)
    assert faces.paths == ("faces/lfw/Eileen_Collins_0001.jpg",)
    assert faces.datasets == ("faces_lfw",)
    assert faces.groups == ("faces/lfw:Eileen_Collins_0001",)
    assert faces.splits[0] == segmenter.split_of(faces.groups[0])
    # An aligned face: skin-toned, brighter than the coins photo's dark background.
    assert 80 < float(np.mean(faces.crops[0])) < 200
    assert not list(out.glob("*.partial.*"))


def test_placement_prepare_stores_the_wide_view(photo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "wide"
    assert placement.prepare(photo_root, out, ["faces/lfw"]) == 1
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"] == 1
    assert [r["path"] for r in index["rows"]] == ["faces/lfw/Eileen_Collins_0001.jpg"]
    wide = np.load(out / "wide.npy")
    assert wide.shape[0] == 1 and wide.shape[-1] == 3 and wide.shape[1] > CROP_SIZE


def test_prepare_refuses_a_folder_without_faces_or_a_missing_one(
    photo_root: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "root" / "faces" / "none"
    empty.mkdir(parents=True)
    cv2.imwrite(str(empty / "coins.png"), skdata.coins())
    with pytest.raises(RuntimeError, match="no face found"):
        segmenter.prepare_faces(tmp_path / "root", tmp_path / "a", ["faces/none"])
    with pytest.raises(RuntimeError, match="no usable face"):
        placement.prepare(tmp_path / "root", tmp_path / "b", ["faces/none"])
    with pytest.raises(FileNotFoundError, match="face source folder missing"):
        segmenter.prepare_faces(photo_root, tmp_path / "c", ["faces/absent"])
    assert not (tmp_path / "a").exists()  # nothing half-written
