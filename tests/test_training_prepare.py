"""``training.prepare``: videos, images and speech to a dataset with a split by identity."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from helpers import video_frames

from avinpaint.geometry import apply_affine, similarity_transform
from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ, CROP_SIZE, CROP_TEMPLATE_256, SPEAKER_WINDOW_S
from stream.align import landmark_weights
from stream.audio import read_audio_16k
from stream.detect import FaceDetector
from stream.errors import UsageError
from stream.testclip import ClipTruth
from training.__main__ import main
from training.manifest import (
    AudioRecord,
    CropRecord,
    ErrorRecord,
    read_manifest,
    record_from_json,
)
from training.prepare import (
    IdentityOptions,
    IdentityRule,
    PrepareInputs,
    PrepareOptions,
    PrepareSummary,
    PsiModel,
    assign_splits,
    count_test_identities,
    inside_fraction,
    prepare,
    speech_segments,
    voiced_speech,
)

cv2.setNumThreads(1)
torch.set_num_threads(1)

NAMES = ("alice", "bob", "carol")
CLIP_S = 1.6
FPS = 25
SR = AUDIO_SAMPLE_RATE_HZ
WINDOW = round(SPEAKER_WINDOW_S * SR)

MakeClip = Callable[..., ClipTruth]


@dataclass(frozen=True)
class Clips:
    folder: Path
    truths: dict[str, ClipTruth]


@pytest.fixture(scope="module")
def clips(make_clip: MakeClip) -> Clips:
    """Three short clips, each seed a different 'person', plus a file that is not a video."""
    truths = {
        name: make_clip(
            f"prepare_videos/{name}.mp4",
            width=320,
            height=240,
            duration_s=CLIP_S,
            seed=index + 1,
            occluder=False,
        )
        for index, name in enumerate(NAMES)
    }
    folder = truths["alice"].path.parent
    (folder / "broken.mp4").write_bytes(b"\x00not a video at all" * 64)
    return Clips(folder, truths)


def fake_psi(name: str = "fake") -> PsiModel:
    """A cheap deterministic stand-in for SFace: channel means over a 4x4 grid, 48-d."""

    def embed(crops: np.ndarray) -> np.ndarray:
        n = len(crops)
        grid = crops.reshape(n, 4, CROP_SIZE // 4, 4, CROP_SIZE // 4, 3).mean(axis=(2, 4))
        return np.asarray(grid.reshape(n, -1), dtype=np.float32)

    return PsiModel(name=name, embed=embed)


@dataclass(frozen=True)
class Prepared:
    dataset: Path
    summary: PrepareSummary


@pytest.fixture(scope="module")
def prepared(clips: Clips, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The three clips (and the broken file) prepared with the real SFace and Silero VAD."""
    dataset = tmp_path_factory.mktemp("prepared") / "ds"
    summary = prepare(PrepareInputs(videos=(clips.folder,)), dataset, PrepareOptions(frame_step=5))
    return Prepared(dataset, summary)


def _crops(records: list[CropRecord | AudioRecord]) -> list[CropRecord]:
    return [r for r in records if isinstance(r, CropRecord)]


def _audio(records: list[CropRecord | AudioRecord]) -> list[AudioRecord]:
    return [r for r in records if isinstance(r, AudioRecord)]


# --- videos ---------------------------------------------------------------------------------


def test_counts_match_frames_step_and_audio(clips: Clips, prepared: Prepared) -> None:
    records = read_manifest(prepared.dataset / "manifest.jsonl")
    crops, audio = _crops(records), _audio(records)
    per_video = math.ceil(round(CLIP_S * FPS) / 5)
    assert prepared.summary.crops == len(crops) == 3 * per_video
    for name in NAMES:
        mine = [c for c in crops if c.identity == name]
        assert [c.frame_index for c in mine] == list(range(0, round(CLIP_S * FPS), 5))
        assert [c.time_s for c in mine] == pytest.approx([i / FPS for i in range(0, 40, 5)])
        segments = [a for a in audio if a.identity == name]
        # 1.6 s of speech: one segment, that speech repeated to fill the window
        assert len(segments) == 1 and segments[0].paired
        assert 1.0 <= segments[0].speech_s <= CLIP_S
        assert {c.audio for c in mine} == {(segments[0].audio,)}
        samples = np.load(prepared.dataset / segments[0].audio)
        assert samples.dtype == np.float32 and samples.shape == (WINDOW,)
        n = round(segments[0].speech_s * SR)
        np.testing.assert_array_equal(samples[n : 2 * n], samples[:n])
    assert prepared.summary.audio_segments == 3
    assert prepared.summary.frames_without_face == 0
    assert {c.inside_fraction for c in crops} == {1.0}  # the face is well inside the frame


def test_psi_rows_are_sface_embeddings_of_the_crops(prepared: Prepared) -> None:
    crops = _crops(read_manifest(prepared.dataset / "manifest.jsonl"))
    psi = np.load(prepared.dataset / "psi.npy")
    assert psi.shape == (len(crops), 128) and psi.dtype == np.float32
    assert [c.psi_row for c in crops] == list(range(len(crops)))
    unit = psi / np.linalg.norm(psi, axis=1, keepdims=True)
    # every clip shows the same (astronaut) face: SFace should agree with itself
    assert (unit @ unit.T).min() > 0.5


def test_crops_are_aligned_on_the_template(clips: Clips, prepared: Prepared) -> None:
    crops = _crops(read_manifest(prepared.dataset / "manifest.jsonl"))
    detector = FaceDetector()
    to_template, to_ideal, to_stored = [], [], []
    for crop in crops[::2]:
        image = cv2.imread(str(prepared.dataset / crop.image))
        assert image is not None and image.shape == (CROP_SIZE, CROP_SIZE, 3)
        found = detector.detect(np.asarray(image, dtype=np.uint8))
        assert found, crop.image
        redetected = found[0].landmarks5
        truth = clips.truths[crop.identity].landmarks5[crop.frame_index]
        stored = apply_affine(np.array(crop.source_affine), truth)
        best = similarity_transform(truth, CROP_TEMPLATE_256, landmark_weights(truth))
        ideal = apply_affine(best, truth)
        to_template.append(_mean_distance(redetected, CROP_TEMPLATE_256))
        to_ideal.append(_mean_distance(stored, ideal))
        to_stored.append(_mean_distance(redetected, stored))
    # Errors in crop pixels (the face is about twice as large in the crop as in the 320x240
    # clip). A real face never fits the mean template exactly: the astronaut's true landmarks
    # lie 7.8 px (mean) from it even under the best equal-weight similarity, so a crop cannot
    # come closer; the fit weighs the mouth corners less on a frontal face (so that a mask's
    # guessed mouth pulls less), which leaves them, and the mean, a little further out.
    assert max(to_template) < 14.0
    # The stored alignment is within a few px of the best possible for the true landmarks
    # (what remains is YuNet's noise on a 110 px face).
    assert max(to_ideal) < 10.0
    # The PNG is the warp the manifest describes: landmarks found in it are where the stored
    # matrix puts the true ones (to YuNet's noise on the crop: 2.6-4.5 px on most crops, up
    # to 9.7 on one; a wrong matrix is tens of px off).
    assert float(np.median(to_stored)) < 6.0
    assert max(to_stored) < 12.0


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1).mean())


def test_split_is_by_identity(prepared: Prepared) -> None:
    records = read_manifest(prepared.dataset / "manifest.jsonl")
    splits = json.loads((prepared.dataset / "splits.json").read_text())
    train, test = set(splits["train"]), set(splits["test"])
    assert train and test and not train & test and train | test == set(NAMES)
    for record in records:
        assert record.split == ("test" if record.identity in test else "train")
    assert (prepared.summary.train_identities, prepared.summary.test_identities) == (2, 1)


def test_unreadable_file_is_skipped_counted_and_listed(clips: Clips, prepared: Prepared) -> None:
    assert prepared.summary.errors == 1
    lines = (prepared.dataset / "errors.jsonl").read_text().splitlines()
    errors = [ErrorRecord.from_json(line) for line in lines]
    assert [e.source for e in errors] == [str(clips.folder / "broken.mp4")]
    assert errors[0].error
    assert "1 unreadable" in prepared.summary.line()
    assert not list((prepared.dataset / "crops").glob("broken*"))


def test_resume_does_no_work_and_writes_the_same_files(clips: Clips, prepared: Prepared) -> None:
    dataset = prepared.dataset
    names = ("manifest.jsonl", "psi.npy", "splits.json", "errors.jsonl")
    before = {n: (dataset / n).read_bytes() for n in names}
    crop_times = {p: p.stat().st_mtime_ns for p in (dataset / "crops").rglob("*.png")}

    # No psi network or VAD may even be created: these raise if called.
    def refuse(_: np.ndarray) -> np.ndarray:
        raise AssertionError("psi called on resume")

    again = prepare(
        PrepareInputs(videos=(clips.folder,)),
        dataset,
        PrepareOptions(frame_step=5),
        psi=PsiModel(name="sface-2021dec-int8bq/opencv", embed=refuse),
    )
    assert (again.processed, again.resumed) == (0, 4)
    assert {n: (dataset / n).read_bytes() for n in names} == before
    assert {p: p.stat().st_mtime_ns for p in crop_times} == crop_times

    with pytest.raises(UsageError, match="frame_step"):
        prepare(PrepareInputs(videos=(clips.folder,)), dataset, PrepareOptions(frame_step=7))


def test_crash_mid_source_redoes_only_that_source(clips: Clips, tmp_path: Path) -> None:
    inputs = PrepareInputs(videos=(clips.folder,))
    options = PrepareOptions(frame_step=10, psi_batch_size=2)
    calls = 0
    good = fake_psi()

    def crash_on_fourth_batch(crops: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 4:  # the second batch of the second video: two of its crops are written
            raise RuntimeError("killed")
        return good.embed(crops)

    crashing = PsiModel(name="fake", embed=crash_on_fourth_batch)
    with pytest.raises(RuntimeError, match="killed"):
        prepare(inputs, tmp_path / "ds", options, psi=crashing)
    assert len(list((tmp_path / "ds" / "state").glob("*.json"))) == 1

    resumed = prepare(inputs, tmp_path / "ds", options, psi=good)
    # alice was complete; bob (crashed), carol and the broken file are done now
    assert (resumed.processed, resumed.resumed) == (3, 1)
    prepare(inputs, tmp_path / "clean", options, psi=good)
    assert (tmp_path / "ds" / "manifest.jsonl").read_text().replace("/ds/", "/X/") == (
        tmp_path / "clean" / "manifest.jsonl"
    ).read_text().replace("/clean/", "/X/")
    np.testing.assert_array_equal(
        np.load(tmp_path / "ds" / "psi.npy"), np.load(tmp_path / "clean" / "psi.npy")
    )
    assert not [p for p in (tmp_path / "ds").rglob("*") if p.name.endswith(".partial")]


# --- images, frames folders, speech -----------------------------------------------------------


def _astronaut_bgr() -> np.ndarray:
    from skimage import data

    rgb: np.ndarray = data.astronaut()  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(samples * 32767.0, -32768, 32767).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = SR
        frame.pts = 0
        frame.time_base = Fraction(1, SR)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_image_frames_and_speech_folders(clips: Clips, tmp_path: Path) -> None:
    face = _astronaut_bgr()
    images = tmp_path / "faces"
    (images / "ann").mkdir(parents=True)
    (images / "ben").mkdir()
    cv2.imwrite(str(images / "ann" / "one.png"), face)
    cv2.imwrite(str(images / "ann" / "two.jpg"), cv2.flip(face, 1))
    cv2.imwrite(str(images / "ben" / "small.jpg"), cv2.resize(face, (256, 256)))
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "ben" / "noface.png"), noise)
    (images / "ben" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")

    # A PC-AVS-like frames folder (9-digit id) with its audio elsewhere under the same root.
    videos = tmp_path / "pcavs"
    frames_dir = videos / "Mouth_Source" / "123456789"
    frames_dir.mkdir(parents=True)
    frames, _ = video_frames(clips.truths["bob"].path)
    for index, image in enumerate(frames[:12]):
        cv2.imwrite(str(frames_dir / f"{index:06d}.jpg"), image)
    clip_audio = read_audio_16k(clips.truths["bob"].path)
    assert clip_audio is not None
    _write_wav(videos / "Audio_Source" / "123456789.wav", clip_audio.samples_16k)

    speech = tmp_path / "speech"
    _write_wav(speech / "dora" / "hello.wav", clip_audio.samples_16k)
    _write_wav(speech / "flat" / "1234-5678-0001.wav", clip_audio.samples_16k)

    summary = prepare(
        PrepareInputs(videos=(videos,), images=(images,), speech=(speech,)),
        tmp_path / "ds",
        PrepareOptions(frame_step=5, test_fraction=0.4),
        psi=fake_psi(),
    )
    records = read_manifest(tmp_path / "ds" / "manifest.jsonl")
    crops, audio = _crops(records), _audio(records)
    by_identity = {(r.identity, r.source_kind, r.kind) for r in records}
    assert by_identity == {
        ("vox1234", "frames", "crop"),
        ("vox1234", "frames", "audio"),
        ("ann", "image", "crop"),
        ("ben", "image", "crop"),
        ("dora", "speech", "audio"),
        ("libri1234", "speech", "audio"),
    }
    framed = [c for c in crops if c.source_kind == "frames"]
    assert [c.frame_index for c in framed] == [0, 5, 10]
    assert [c.time_s for c in framed] == pytest.approx([0.0, 0.2, 0.4])
    assert all(c.audio and c.audio[0].startswith("audio/vox1234/") for c in framed)
    stills = [c for c in crops if c.source_kind == "image"]
    assert len(stills) == 3 and all(c.time_s is None and not c.audio for c in stills)
    assert all(not a.paired for a in audio if a.source_kind == "speech")
    assert summary.frames_without_face == 1
    assert summary.errors == 1
    errors = (tmp_path / "ds" / "errors.jsonl").read_text()
    assert "truncated.jpg" in errors
    assert np.load(tmp_path / "ds" / "psi.npy").shape == (len(crops), 48)
    # each group (paired, face only, voice only) is split on its own
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])
    assert len(splits["test"]) == 2  # one of {ann, ben}, one of {dora, libri1234}; vox1234 alone


def test_cli_prepare_prints_one_line_and_fails_cleanly(
    clips: Clips, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    args = ["prepare", "--videos", str(clips.folder), "-o", str(out), "--frame-step", "20"]
    code = main([*args, "--no-psi", "--no-progress", "--identity-alias", "carol=alice"])
    printed = capsys.readouterr()
    assert code == 0
    assert printed.out.count("\n") == 1 and printed.out.startswith("prepared ")
    records = read_manifest(out / "manifest.jsonl")
    assert {r.identity for r in records} == {"alice", "bob"}
    assert all(isinstance(r, AudioRecord) or r.psi_row is None for r in records)
    assert not (out / "psi.npy").exists()

    code = main(["prepare", "--videos", str(tmp_path / "missing"), "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 2 and printed.err.count("\n") == 1 and "missing" in printed.err

    code = main(["prepare", "--videos", str(clips.folder), "-o", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 2 and "other settings" in printed.err  # psi on now, off before

    code = main(["prepare", "-o", str(tmp_path / "x"), "--identity-regex", "("])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match_path", "fallback", "expected"),
    [
        ("pcavs/Input/741400163/000000.jpg", "x", "vox7414"),
        ("pcavs/Pose_Source/741400104.mp4", "x", "vox7414"),
        ("pcavs/Input/00002.mp4", "00002", "00002"),
        ("librispeech/train/3005-163389-0005.flac", "train", "libri3005"),
        ("grid/GRID/sbwe5n.mpg", "sbwe5n", "sbwe5n"),
        ("photos/20240101123/img.jpg", "photos", "photos"),  # 11 digits: not a VoxCeleb id
    ],
)
def test_default_identity_rules(match_path: str, fallback: str, expected: str) -> None:
    assert IdentityOptions().identify(match_path, fallback) == expected


def test_identity_rules_aliases_and_named_groups() -> None:
    options = IdentityOptions(
        rules=(IdentityRule(r"[0-9]+_[0-9]+_(?P<id>[a-z]+)_[0-9]+\."),),
        aliases=(("id2_vcd_swwp2s", "sbia1a"),),
    )
    assert options.identify("fmd/0_0_anhu_0004.jpg", "fmd") == "anhu"
    assert options.identify("fmd/augmented_image_9.jpg", "fmd") == "fmd"
    assert options.identify("grid/id2_vcd_swwp2s.mpg", "id2_vcd_swwp2s") == "sbia1a"
    no_defaults = IdentityOptions(use_defaults=False)
    assert no_defaults.identify("pcavs/741400104.mp4", "741400104") == "741400104"
    with pytest.raises(UsageError):
        IdentityRule("(")


def test_speech_segments_fill_short_pieces_by_repeating() -> None:
    voiced = np.arange(2 * WINDOW + SR, dtype=np.float32)
    segments = speech_segments(voiced, window_samples=WINDOW, min_samples=SR)
    assert [s.speech_samples for s in segments] == [WINDOW, WINDOW, SR]
    np.testing.assert_array_equal(segments[1].samples_16k, voiced[WINDOW : 2 * WINDOW])
    tail = segments[2].samples_16k
    assert tail.shape == (WINDOW,)
    np.testing.assert_array_equal(tail, np.tile(voiced[2 * WINDOW :], 6))
    short = speech_segments(voiced[: SR - 1], window_samples=WINDOW, min_samples=SR)
    assert short == []


class EnergyVad:
    """Deterministic stand-in: loud frames are speech."""

    frame_samples = 512

    def reset(self) -> None:
        pass

    def speech_probability(self, frame: np.ndarray) -> float:
        return 1.0 if np.abs(frame).mean() > 0.05 else 0.0


def test_voiced_speech_cuts_silence_and_keeps_hangover() -> None:
    n = 512
    loud, quiet = np.full(4 * n, 0.5, np.float32), np.zeros(10 * n, np.float32)
    samples = np.concatenate([quiet, loud, quiet, loud, quiet[:100]])
    kept = voiced_speech(samples, EnergyVad(), hangover_frames=0)
    np.testing.assert_array_equal(kept, np.full(8 * n, 0.5, np.float32))
    with_hangover = voiced_speech(samples, EnergyVad(), hangover_frames=2)
    assert len(with_hangover) == 10 * n  # the tail after the second burst is < a frame


def test_splits_are_seeded_disjoint_and_order_free() -> None:
    groups = [{f"p{i}" for i in range(10)}, {f"f{i}" for i in range(5)}, {"v0"}]
    splits = assign_splits(groups, 0.2, seed=3)
    assert splits == assign_splits([set(reversed(sorted(g))) for g in groups], 0.2, seed=3)
    tests = {i for i, s in splits.items() if s == "test"}
    assert len(tests & groups[0]) == 2 and len(tests & groups[1]) == 1 and "v0" not in tests
    assert splits != assign_splits(groups, 0.2, seed=4)
    assert [count_test_identities(n, 0.2) for n in (0, 1, 2, 5, 10)] == [0, 0, 1, 1, 2]
    assert count_test_identities(3, 0.0) == 0 and count_test_identities(3, 1.0) == 3


def test_inside_fraction_of_a_crop() -> None:
    same = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert inside_fraction(same, CROP_SIZE, CROP_SIZE) == 1.0
    assert inside_fraction(same, CROP_SIZE // 2, CROP_SIZE) == 0.5
    shifted = np.array([[1.0, 0.0, -CROP_SIZE * 0.75], [0.0, 1.0, 0.0]])
    assert inside_fraction(shifted, CROP_SIZE, CROP_SIZE) == 0.25


def test_manifest_records_round_trip_and_reject_unknown_keys() -> None:
    crop = CropRecord(
        identity="a",
        split="test",
        source="/x/a.mp4",
        source_kind="video",
        image="crops/a/a_000000.png",
        frame_index=0,
        time_s=0.04,
        landmarks=((1.5, 2.0),) * 5,
        source_affine=((1.0, 0.0, 2.0), (0.0, 1.0, 3.0)),
        detection_score=0.9,
        inside_fraction=0.75,
        psi_row=3,
        audio=("audio/a/a_000.npy",),
    )
    audio = AudioRecord("a", "train", "/x/a.mp4", "video", "audio/a/a_000.npy", 0, 2.5, True)
    for record in (crop, audio):
        assert record_from_json(record.to_json()) == record
    data = json.loads(crop.to_json())
    assert next(iter(data)) == "kind"
    with pytest.raises(ValueError, match="unknown"):
        record_from_json(json.dumps({**data, "extra": 1}))
    with pytest.raises(ValueError):
        CropRecord.from_dict({**data, "split": "val"})


# --- real data ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_prepare_on_real_data(shared_data: Path, tmp_path: Path) -> None:
    links = {
        "videos/pcavs/Input/00010.mp4": "talking_heads/pcavs/Input/00010.mp4",
        "videos/pcavs/Pose_Source/741400163.mp4": "talking_heads/pcavs/Pose_Source/741400163.mp4",
        "images/fmd/0_0_anhu_0004.jpg": "faces/unmasked/fmd/0_0_anhu_0004.jpg",
        "images/fmd/0_0_aidai_0014.jpg": "faces/unmasked/fmd/0_0_aidai_0014.jpg",
        "speech/3005/3005-163389-0000.flac": (
            "speech/librispeech/librispeech_test-other/3005/3005-163389-0000.flac"
        ),
        "speech/3005/3005-163389-0001.flac": (
            "speech/librispeech/librispeech_test-other/3005/3005-163389-0001.flac"
        ),
    }
    for link, target in links.items():
        (tmp_path / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / link).symlink_to(shared_data / target)
    summary = prepare(
        PrepareInputs(
            videos=(tmp_path / "videos",),
            images=(tmp_path / "images",),
            speech=(tmp_path / "speech",),
        ),
        tmp_path / "ds",
        PrepareOptions(
            frame_step=25,
            identity=IdentityOptions(rules=(IdentityRule(r"[0-9]+_[0-9]+_([a-z]+)_"),)),
        ),
    )
    records = read_manifest(tmp_path / "ds" / "manifest.jsonl")
    crops = _crops(records)
    assert summary.errors == 0
    assert {r.identity for r in records} == {"00010", "vox7414", "anhu", "aidai", "libri3005"}
    # 106 and 346 frames, every 25th, a face in each
    assert len([c for c in crops if c.source_kind == "video"]) == 5 + 14
    assert len([c for c in crops if c.source_kind == "image"]) == 2
    assert all(a.speech_s > 1.0 for a in _audio(records))
    assert {a.identity for a in _audio(records) if not a.paired} == {"libri3005"}
    assert np.load(tmp_path / "ds" / "psi.npy").shape == (len(crops), 128)
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])
