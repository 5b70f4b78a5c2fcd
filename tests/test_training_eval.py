"""``training.evaluate``: the report and grid on a tiny generated dataset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_training_trainer import TINY_MODEL, make_tiny_dataset

from avinpaint.checkpoint import save as save_generator
from avinpaint.model import Generator
from avinpaint.spec import CROP_SIZE
from training.__main__ import main
from training.data import DatasetIndex, read_crop
from training.evaluate import GRID_COLUMNS, METHODS, EvalOptions, evaluate, select_faces
from training.metrics import dlib_available

torch.set_num_threads(1)
cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset with 3 held-out identities with speech, 1 without, and an untrained model."""
    root = tmp_path_factory.mktemp("eval")
    dataset = make_tiny_dataset(
        root / "ds", {"train": 1, "test": 3}, {"test": 1}, crops_per_identity=2
    )
    torch.manual_seed(0)
    model = save_generator(Generator(TINY_MODEL), root / "tiny.safetensors")
    return dataset, model


def test_faces_masks_and_audio_pairing(setup: tuple[Path, Path]) -> None:
    dataset, model = setup
    index = DatasetIndex.load(dataset)
    options = EvalOptions(dataset=dataset, model=str(model), output=dataset / "unused")
    faces = select_faces(index, options)
    # Held-out identities with speech only (id01..id03), taken round-robin.
    assert [f.identity for f in faces] == ["id01", "id02", "id03"] * 2
    assert [f.swapped_identity for f in faces] == ["id02", "id03", "id01"] * 2
    for face in faces:
        assert index.audio[face.true_audio].identity == face.identity
        assert index.audio[face.swapped_audio].identity == face.swapped_identity
    again = select_faces(index, options)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(faces, again, strict=True))
    assert len(select_faces(index, EvalOptions(dataset, str(model), dataset, max_faces=4))) == 4


def test_all_people_adds_the_face_only_identities_with_the_zero_voice(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, model = setup
    index = DatasetIndex.load(dataset)
    options = EvalOptions(dataset, str(model), tmp_path / "all", people="all", dlib="off")
    faces = select_faces(index, options)
    # id04 has faces but no speech: it is evaluated too, with no voice of its own.
    assert [f.identity for f in faces] == ["id01", "id02", "id03", "id04"] * 2
    assert [f.swapped_identity for f in faces] == ["id02", "id03", "id01", "id01"] * 2
    assert [f.true_audio is None for f in faces] == [False, False, False, True] * 2
    report = evaluate(dataclasses.replace(options, progress=False, grid_rows=2))
    assert (report.faces, report.identities) == (8, 4)
    document = json.loads((tmp_path / "all" / "report.json").read_text())
    assert document["faces_with_own_speech"] == 6
    # Without a voice of its own, "true" is the zero input: the same fill as no audio.
    per_face = document["per_face"]["metrics"]
    assert per_face["ours_true"]["psnr"][3] == pytest.approx(per_face["ours_no_audio"]["psnr"][3])
    assert "all of the split's people (6 faces with their person's speech" in (
        (tmp_path / "all" / "report.md").read_text()
    )


def test_eval_writes_report_json_and_grid(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, model = setup
    out = tmp_path / "report"
    report = evaluate(
        EvalOptions(
            dataset=dataset, model=str(model), output=out, grid_rows=4, dlib="off", progress=False
        )
    )
    assert (report.faces, report.identities) == (6, 3)
    document = json.loads((out / "report.json").read_text())
    assert set(document["means"]) == set(METHODS)
    for name in METHODS:
        means = document["means"][name]
        assert 0.0 <= means["ssim"] <= 1.0 and 0.0 <= means["l1"] <= 1.0
        assert 0.0 <= means["identity_distance"] <= 2.0
        assert 0.0 <= means["acc@1"] <= means["acc@5"] <= means["acc@10"] == 1.0
        assert "dlib_distance" not in means  # dlib off
        assert len(document["per_face"]["metrics"][name]["psnr"]) == 6
    # Every restoration keeps the known pixels; the hole differs from the masked input.
    assert document["means"]["telea"]["psnr"] > document["means"]["masked_input"]["psnr"]
    markdown = (out / "report.md").read_text()
    for label in ("OpenCV Telea", "OpenCV Navier-Stokes", "true speaker", "another speaker"):
        assert label in markdown
    assert "| ours, no audio |" in markdown
    grid = cv2.imread(str(out / "grid.png"))
    assert grid is not None
    assert grid.shape == (28 + 4 * CROP_SIZE, len(GRID_COLUMNS) * CROP_SIZE, 3)
    # The last column is the ground truth of the first face.
    index = DatasetIndex.load(dataset)
    first = read_crop(
        dataset
        / index.crops[select_faces(index, EvalOptions(dataset, "", out))[0].crop_index].image
    )
    np.testing.assert_array_equal(grid[28 : 28 + CROP_SIZE, -CROP_SIZE:], first)


def test_cli_eval(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, model = setup
    out = tmp_path / "cli"
    argv = ["eval", str(model), "--dataset", str(dataset), "-o", str(out), "--no-progress"]
    code = main([*argv, "--max-faces", "2", "--holes", "paper_box", "--grid-rows", "2"])
    assert code == 0, capsys.readouterr().err
    assert "evaluated 2 faces of 2 identities" in capsys.readouterr().out
    assert (out / "report.md").is_file() and (out / "grid.png").is_file()
    means = json.loads((out / "report.json").read_text())["means"]
    every = ["eval", str(model), "--dataset", str(dataset), "-o", str(tmp_path / "every")]
    every += ["--no-progress", "--dlib", "off"]
    assert main([*every, "--people", "all", "--max-faces", "4", "--grid-rows", "2"]) == 0
    assert "evaluated 4 faces of 4 identities" in capsys.readouterr().out
    report = json.loads((tmp_path / "every" / "report.json").read_text())
    assert report["settings"]["people"] == "all"
    # dlib's metrics when the eval extra is installed (cartoon faces: the template box).
    assert ("dlib_distance" in means["ours_true"]) == dlib_available()
    assert (
        main(
            [
                "eval",
                str(tmp_path / "missing.safetensors"),
                "--dataset",
                str(dataset),
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "missing.safetensors" in capsys.readouterr().err
