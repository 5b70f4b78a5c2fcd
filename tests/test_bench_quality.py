"""``bench.quality`` on short generated clips: the report's structure, the metrics on a known
case, the voice conditions' speaker input, and ``--speaker-audio`` in the pipeline and CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

import stream.cli
from avinpaint.spec import CROP_SIZE
from bench.quality import (
    Clip,
    Identity,
    Restorer,
    TrainingData,
    find_clips,
    main,
    measure_clip,
    median_pitch_hz,
    occluder_shapes,
    pick_partner,
    placed_affines,
)
from bench.restore_video import make_masked_clip
from stream.inpaint import OpenCVInpainter
from stream.media import VideoReader
from stream.occlusion import FixedRegion
from stream.pipeline import ProcessOptions, process_file
from stream.region import box_mask
from stream.speaker import SpeechWindow
from stream.testclip import ClipTruth
from stream.types import Image, InpaintResult, Mask
from training.manifest import CropRecord, write_manifest

SMALL = {"width": 320, "height": 240, "occluder": False}


@pytest.fixture(scope="module")
def own(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    """4 s, speech first: the tail frames have heard more than 2 s of it."""
    return make_clip("quality_own.mp4", duration_s=4.0, **SMALL)


@pytest.fixture(scope="module")
def other(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    """Another clip with other words: the swapped speaker."""
    text = "Seven bright kites drift above the harbour while the ferry waits."
    return make_clip("quality_other.mp4", duration_s=4.0, seed=3, text=text, **SMALL)


@pytest.fixture(scope="module")
def silent(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    return make_clip("quality_silent.mp4", duration_s=3.0, audio=False, **SMALL)


def _crop(identity: str, split: str, source: str) -> CropRecord:
    return CropRecord(
        identity=identity,
        split=split,  # type: ignore[arg-type]
        source=source,
        source_kind="video",
        image=f"crops/{identity}/0.png",
        frame_index=0,
        time_s=0.0,
        landmarks=((88.0, 78.0),) * 5,
        source_affine=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        detection_score=0.9,
        inside_fraction=1.0,
        psi_row=None,
        audio=(),
    )


def _manifest(path: Path, crops: Sequence[CropRecord]) -> Path:
    write_manifest(path, crops)
    return path


@pytest.fixture(scope="module")
def report(own: ClipTruth, other: ClipTruth, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quality")
    # The model "trained on" the own clip's file; the other clip's person is not in its data.
    manifest = _manifest(
        out / "manifest.jsonl",
        [_crop("speaker_a", "train", f"../data/{own.path.name}"), _crop("b", "test", "b.mp4")],
    )
    argv = ["-o", str(out), "--clips", str(own.path), str(other.path), "--max-frames", "6"]
    argv += ["--training-manifest", str(manifest)]
    argv += ["--conditions", "masked", "telea_true", "telea", "--dlib-every", "3"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out


def test_report_structure(report: Path) -> None:
    result = json.loads((report / "quality.json").read_text())
    assert set(result) >= {"settings", "clips", "means", "summary"}
    assert result["settings"]["conditions"] == ["masked", "telea_true", "telea"]
    assert set(result["clips"]) == {"quality_own", "quality_other"}
    for clip in result["clips"].values():
        assert clip["frames"] == 6 and clip["first_frame"] == 94  # the last 6 of 100
        assert clip["frames_with_mask"] == 6
        assert clip["painted"] == [clip["occluder"]]
        assert clip["swap_partner"] in {"quality_own", "quality_other"}
        conditions = clip["conditions"]
        assert set(conditions) == {"masked", "telea_true", "telea"}
        for metrics in conditions.values():
            assert metrics["psnr_in_db"] > 0 and metrics["psnr_out_db"] > 0
            assert metrics["psnr_edge_db"] > 0
            assert 0.0 < metrics["sface_cosine"] <= 1.0
        # Both fills change the hole (on this flat synthetic face not always for the better).
        for name in ("telea", "telea_true"):
            assert conditions[name]["l1_in_levels"] != conditions["masked"]["l1_in_levels"]
        assert conditions["telea"]["restored_frame_fraction"] == 1.0
        assert conditions["telea"]["detect_recall"] > 0.5
        # What the sidecar says was restored holds at least the detected region's truth.
        telea = conditions["telea"]
        assert telea["changed_recall"] >= telea["detect_recall"] - 0.01
        assert 0.5 < telea["changed_precision"] <= 1.0
        assert conditions["telea"]["fills"] >= 1 and conditions["telea"]["guard_fallbacks"] == 0
        # Without a model run, the mask is split by what the telea run restored.
        for metrics in conditions.values():
            assert metrics["psnr_in_restored_db"] > 0
        assert telea["psnr_in_restored_db"] != conditions["masked"]["psnr_in_restored_db"]
    assert result["means"]["masked"]["psnr_in_db"] is not None
    assert result["clips"]["quality_own"]["model_saw"] == "train"
    assert result["clips"]["quality_other"]["model_saw"] == "none"
    # One clip per group: each group's mean is that clip's own number.
    by_split = result["means_by_split"]
    assert set(by_split) == {"train", "none"}
    for label, name in (("train", "quality_own"), ("none", "quality_other")):
        own_psnr = result["clips"][name]["conditions"]["telea"]["psnr_in_db"]
        assert by_split[label]["telea"]["psnr_in_db"] == pytest.approx(own_psnr, abs=1e-4)
    table = (report / "quality.md").read_text()
    assert "| **mean** |" in table and "quality_own" in table
    assert "| mean, people the model trained on |" in table
    assert "| mean, people not in its training data |" in table
    montage = (report / "montage.png").read_bytes()
    assert montage[:8] == b"\x89PNG\r\n\x1a\n"


def test_masked_psnr_inside_is_the_hand_computed_one(own: ClipTruth, tmp_path: Path) -> None:
    clip = make_masked_clip(own.path, tmp_path / "m.mp4", seed=5, max_frames=4, first_frame=10)
    measures = measure_clip(own.path, clip, {"masked": clip.path}, {}, Identity(dlib_every=2))
    squared, absolute, count = 0.0, 0.0, 0
    with VideoReader(own.path) as original, VideoReader(clip.path) as masked:
        originals = [f.image for f in original][10:14]
        for index, (frame, want) in enumerate(zip(masked, originals, strict=True)):
            inside = clip.truth[index]
            diff = frame.image[inside].astype(np.float64) - want[inside]
            squared += float(np.square(diff).sum())
            absolute += float(np.abs(diff).sum())
            count += diff.size
    got = measures.summary("masked")
    assert got["psnr_in_db"] == round(10 * math.log10(255**2 / (squared / count)), 2)
    assert got["l1_in_levels"] == round(absolute / count, 3)
    # Outside the mask the masked input is the original up to re-encoding; just outside it
    # lies the paint's soft edge, less wrong than the mask itself.
    assert got["psnr_out_db"] > 35.0
    assert got["psnr_in_db"] < got["psnr_edge_db"] < got["psnr_out_db"]


class _FakeModel:
    """Stands in for ``ModelInpainter``: copies crops and records the speech each run hears."""

    name = "fake"

    def __init__(self) -> None:
        self.runs: list[list[SpeechWindow]] = []

    def use_features(self, features: object) -> None:
        assert features is None
        self.runs.append([])

    def use_speech(self, window: SpeechWindow) -> None:
        self.runs[-1].append(window)

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        return [InpaintResult(face_256=c.copy(), backend="fake", latency_ms=0.0) for c in crops]


def test_voice_conditions_change_the_speaker_input(
    own: ClipTruth, other: ClipTruth, tmp_path: Path
) -> None:
    clip = make_masked_clip(
        own.path, tmp_path / "own_masked.mp4", seed=1, max_frames=5, first_frame=90
    )
    model = _FakeModel()
    conditions = ("model", "model_swapped", "model_novoice")
    restorer = Restorer(conditions, model, tmp_path)  # type: ignore[arg-type]
    files, restorations = restorer.run(clip, other.path)
    assert set(files) == set(restorations) == set(conditions)
    own_voice, swapped, novoice = model.runs
    assert own_voice and swapped and not novoice
    assert restorations["model_novoice"].report.speaker_windows == 0
    assert not np.array_equal(own_voice[-1].samples_16k, swapped[-1].samples_16k)


def test_pipeline_hears_speaker_audio_from_another_file(
    silent: ClipTruth, own: ClipTruth, tmp_path: Path
) -> None:
    heard: dict[str, list[SpeechWindow]] = {"own": [], "other": []}
    region = FixedRegion(box_mask())
    for key, options in (
        ("own", ProcessOptions()),
        ("other", ProcessOptions(speaker_audio=own.path)),
    ):
        process_file(
            silent.path,
            tmp_path / f"{key}.mp4",
            OpenCVInpainter("telea"),
            region,
            options,
            speaker_sink=heard[key].append,
        )
    assert heard["own"] == []  # the silent clip has no audio of its own
    assert heard["other"] and all(w.speech_s >= 2.0 for w in heard["other"])


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``stream.cli``'s process_file and inpainter, recording the options and sink given."""
    calls: dict[str, Any] = {}

    def sink(window: SpeechWindow) -> None:
        pass

    @contextlib.contextmanager
    def open_inpainter(args: object, threads: int) -> Iterator[tuple[object, object]]:
        yield OpenCVInpainter("telea"), sink

    real = stream.cli.process_file

    def process(*args: Any) -> Any:
        calls["options"], calls["sink"] = args[4], args[6]
        return real(*args)

    monkeypatch.setattr(stream.cli, "open_inpainter", open_inpainter)
    monkeypatch.setattr(stream.cli, "process_file", process)
    calls["model_sink"] = sink
    yield calls


def test_cli_speaker_audio(
    captured: dict[str, Any], own: ClipTruth, other: ClipTruth, tmp_path: Path
) -> None:
    base = ["process", str(own.path), "--mask-box", "64,128,128,96", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert stream.cli.main([*base, "-o", str(tmp_path / "a.mp4")]) == 0
        assert captured["options"].speaker_audio is None
        assert captured["sink"] is captured["model_sink"]
        args = ["-o", str(tmp_path / "b.mp4"), "--speaker-audio", str(other.path)]
        assert stream.cli.main([*base, *args]) == 0
        assert captured["options"].speaker_audio == other.path
        args = ["-o", str(tmp_path / "c.mp4"), "--speaker-audio", "none"]
        assert stream.cli.main([*base, *args]) == 0
        assert captured["options"].speaker_audio is None and captured["sink"] is None
    with contextlib.redirect_stderr(io.StringIO()):
        missing = ["-o", str(tmp_path / "d.mp4"), "--speaker-audio", str(tmp_path / "no.wav")]
        assert stream.cli.main([*base, *missing]) == 2


def test_median_pitch_and_partner() -> None:
    t = np.arange(16000, dtype=np.float64) / 16000

    def voice(f0: float) -> np.ndarray:
        return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)).astype(np.float32)

    assert median_pitch_hz(voice(120.0)) == pytest.approx(120.0, rel=0.03)
    assert median_pitch_hz(voice(230.0)) == pytest.approx(230.0, rel=0.03)
    assert median_pitch_hz(np.zeros(16000, np.float32)) is None
    low = Clip(Path("a.mp4"), "anna", 4.0, 110.0)
    same_person = Clip(Path("b.mp4"), "anna", 4.0, 220.0)
    low_other = Clip(Path("c.mp4"), "carl", 4.0, 100.0)
    high_short = Clip(Path("d.mp4"), "dora", 1.0, 210.0)
    high_long = Clip(Path("e.mp4"), "emma", 6.0, 230.0)
    clips = [low, same_person, low_other, high_short, high_long]
    # Another person, the other voice class, enough audio.
    assert pick_partner(low, clips) is high_long
    assert pick_partner(low, [low, same_person]) is None


def test_training_data_labels_clips_by_file_then_person(tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path / "manifest.jsonl",
        [
            _crop("anna", "train", "clips/anna_1.mp4"),
            _crop("carl", "test", "/abs/carl_7.mp4"),
            _crop("dora", "test", "photos/dora.jpg"),
        ],
    )
    data = TrainingData.read(manifest)
    # The file itself, whatever folder it was prepared from.
    assert data.split_of(Clip(Path("/x/anna_1.mp4"), "someone", 4.0, None)) == "train"
    assert data.split_of(Clip(Path("carl_7.mp4"), "carl", 4.0, None)) == "test"
    # Another clip of a person the data holds: that person's split.
    assert data.split_of(Clip(Path("anna_2.mp4"), "anna", 4.0, None)) == "train"
    assert data.split_of(Clip(Path("dora_talks.mp4"), "dora", 4.0, None)) == "test"
    assert data.split_of(Clip(Path("emma.mp4"), "emma", 4.0, None)) == "none"


def test_training_data_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read training manifest"):
        TrainingData.read(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "crop", "identity": "a"}\n')
    with pytest.raises(ValueError, match="not a training manifest"):
        TrainingData.read(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no face crops"):
        TrainingData.read(empty)


def test_cli_rejects_a_missing_training_manifest(own: ClipTruth, tmp_path: Path) -> None:
    argv = ["-o", str(tmp_path), "--clips", str(own.path), "--conditions", "masked"]
    with pytest.raises(SystemExit, match="cannot read training manifest"):
        main([*argv, "--training-manifest", str(tmp_path / "none.jsonl")])


@pytest.mark.parametrize("kind", ["hand", "n95"])
def test_occluder_kind_is_painted(kind: str, own: ClipTruth, tmp_path: Path) -> None:
    shapes = occluder_shapes(kind)
    clip = make_masked_clip(own.path, tmp_path / "m.mp4", seed=2, max_frames=2, shapes=shapes)
    assert set(clip.kinds.values()) == {kind} and clip.truth[0].any()
    again = make_masked_clip(own.path, tmp_path / "n.mp4", seed=2, max_frames=2, shapes=shapes)
    assert np.array_equal(clip.truth[1], again.truth[1])  # seeded: the same paint twice


class _GreyModel:
    """Fills every hole pixel with mid-grey, leaves the rest: shows exactly what was restored."""

    name = "grey"

    def use_features(self, features: object) -> None:
        assert features is None

    def use_speech(self, window: SpeechWindow) -> None:
        pass

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        out = []
        for crop, mask in zip(crops, masks, strict=True):
            filled = crop.copy()
            filled[mask > 0.5] = 128
            out.append(InpaintResult(face_256=filled, backend="grey", latency_ms=0.0))
        return out


def test_model_true_restores_exactly_the_painted_region(own: ClipTruth, tmp_path: Path) -> None:
    clip = make_masked_clip(own.path, tmp_path / "m.mp4", seed=2, max_frames=3, first_frame=20)
    restorer = Restorer(("model_true",), _GreyModel(), tmp_path)  # type: ignore[arg-type]
    files, restorations = restorer.run(clip, None)
    assert not restorations and restorer.fills["model_true"]["fills"] == 3
    with VideoReader(clip.path) as masked, VideoReader(files["model_true"]) as restored:
        for index, (before, after) in enumerate(zip(masked, restored, strict=True)):
            inside = clip.truth[index]
            assert inside.sum() > 500
            # Grey everywhere in the truth (up to re-encoding), the masked frame elsewhere.
            assert np.abs(after.image[inside].astype(int) - 128).mean() < 4.0
            outside = ~inside
            diff = np.abs(after.image[outside].astype(int) - before.image[outside]).mean()
            assert diff < 1.0


def test_find_clips_takes_every_video_suffix(tmp_path: Path) -> None:
    for name in ("a.mp4", "grid/b.mpg", "c.MOV", "notes.txt", "d.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_clips([str(tmp_path)])] == ["a.mp4", "b.mpg", "c.MOV"]
    assert [p.name for p in find_clips([str(tmp_path / "*.mp4")])] == ["a.mp4"]
    assert find_clips([str(tmp_path / "missing")]) == []


def test_placed_affines_take_the_pipeline_crop_nearest_each_painted_face() -> None:
    painted = np.array([[0.5, 0.0, -40.0], [0.0, 0.5, -20.0]])  # frame -> crop, 2x zoom out
    near = painted.copy()
    near[:, 2] += (3.0, -2.0)  # 6 px and 4 px in the frame: the same face
    far = painted.copy()
    far[:, 2] -= (150.0, 0.0)  # another face 300 px to the right
    grey = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    clip = SimpleNamespace(affines=[[painted], [painted], [painted]])
    regions = {
        0: [(grey, cv2.invertAffineTransform(far)), (grey, cv2.invertAffineTransform(near))],
        1: [(grey, cv2.invertAffineTransform(far))],
    }
    placed = placed_affines(clip, regions)  # type: ignore[arg-type]
    np.testing.assert_allclose(placed[0][0], near, atol=1e-9)
    np.testing.assert_allclose(placed[1][0], painted)  # only a far crop: the painting's own
    np.testing.assert_allclose(placed[2][0], painted)  # nothing restored there


def test_model_placed_restores_the_true_region_in_the_runs_crops(
    own: ClipTruth, tmp_path: Path
) -> None:
    clip = make_masked_clip(own.path, tmp_path / "m.mp4", seed=2, max_frames=3, first_frame=20)
    restorer = Restorer(("model", "model_placed"), _GreyModel(), tmp_path)  # type: ignore[arg-type]
    files, restorations = restorer.run(clip, None)
    assert set(restorations) == {"model"} and restorer.fills["model_placed"]["fills"] == 3
    with VideoReader(files["model_placed"]) as restored:
        for index, frame in enumerate(restored):
            inside = clip.truth[index]
            assert np.abs(frame.image[inside].astype(int) - 128).mean() < 4.0
    alone = Restorer(("model_placed",), _GreyModel(), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="model condition"):
        alone.run(clip, None)
