"""The occlusion segmenter's network, weights files, training data and training loop."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from avinpaint.occlusion_net import (
    OcclusionNet,
    OcclusionNetConfig,
    OcclusionNetError,
    export_onnx,
    load_occlusion_net,
    read_metadata,
    save_occlusion_net,
)
from avinpaint.spec import CROP_SIZE
from training.masks import MaskMixture, ShapeKind
from training.occluders import OccluderRenderer
from training.segmenter import (
    FaceSet,
    MaskTemplate,
    SampleMaker,
    TrainConfig,
    _group,
    _misalign,
    _training_pool,
    batch_iou,
    contact_sheet,
    list_sources,
    load_mask_templates,
    paint_template,
    score_masks,
    segmentation_loss,
    split_of,
    train,
    v2_mixture,
    v5_mixture,
)

TINY = OcclusionNetConfig(widths=(4, 8, 8, 8, 8))


def _face(seed: int = 0) -> np.ndarray:
    """A smooth face-coloured crop: not a face, but enough for the painters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(90, 200, (8, 8, 3), dtype=np.uint8)
    return np.asarray(
        cv2.resize(small, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC), np.uint8
    )


def test_net_maps_crops_to_full_size_logits() -> None:
    net = OcclusionNet(TINY).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, CROP_SIZE, CROP_SIZE) * 255)
    assert out.shape == (2, 1, CROP_SIZE, CROP_SIZE)
    assert torch.isfinite(out).all()


def test_config_checks_and_round_trips() -> None:
    with pytest.raises(ValueError):
        OcclusionNetConfig(input_px=100)
    with pytest.raises(ValueError):
        OcclusionNetConfig(widths=(8, 8, 8, 8, 8, 8, 8, 8))
    assert OcclusionNetConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(OcclusionNetError):
        OcclusionNetConfig.from_json('{"widths": [4], "colour": 1}')


def test_weights_round_trip_and_foreign_files_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = OcclusionNet(TINY).eval()
    path = tmp_path / "net.safetensors"
    save_occlusion_net(path, net, {"note": "test"})
    loaded = load_occlusion_net(path)
    assert loaded.config == TINY
    assert read_metadata(path)["note"] == "test"
    x = torch.rand(1, 3, CROP_SIZE, CROP_SIZE) * 255
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(OcclusionNetError, match="not an occlusion net"):
        load_occlusion_net(foreign)
    with pytest.raises(OcclusionNetError):
        load_occlusion_net(tmp_path / "missing.safetensors")


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = OcclusionNet(TINY)
    # Non-trivial BatchNorm statistics, so folding them at export is exercised.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, CROP_SIZE, CROP_SIZE) * 255)
    net.eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, CROP_SIZE, CROP_SIZE)).astype(np.float32)
    (onnx_out,) = session.run(["logits"], {"crops": x})
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)


def test_split_is_by_group_and_stable() -> None:
    groups = [f"person{i}" for i in range(2000)]
    splits = [split_of(g) for g in groups]
    assert splits == [split_of(g) for g in groups]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.7) < 0.04
    assert abs(share["val"] - 0.1) < 0.03
    assert abs(share["test"] - 0.2) < 0.03


def test_identity_groups_follow_each_collection() -> None:
    fmd = "faces/unmasked/fmd"
    assert _group(fmd, Path("0_0_anhu_0004.jpg")) == _group(fmd, Path("0_0_anhu_0155.jpg"))
    assert _group(fmd, Path("augmented_image_1.jpg")) == _group(fmd, Path("augmented_image_9.jpg"))
    assert _group(fmd, Path("12.jpg")) != _group(fmd, Path("13.jpg"))
    pcavs = "talking_heads/pcavs"
    assert _group(pcavs, Path("a/741400104.mp4")) == _group(pcavs, Path("b/741400163.mp4"))
    assert _group(pcavs, Path("Pose_Source/517600078/000008.jpg")) == "pcavs:5176"
    grid = "talking_heads/grid"
    assert _group(grid, Path("id2_vcd_swwp2s.mpg")) == _group(grid, Path("GRID/sbia1a.mpg"))
    assert _group("identities/orl", Path("att_faces/s7/3.pgm")) == "orl:s7"
    frl = "faces/face_research_lab"
    neutral, smiling = Path("london/001_neutral.jpg"), Path("london/001_smiling.jpg")
    assert _group(frl, neutral) == _group(frl, smiling)
    assert _group(frl, Path("lisa/15cm.jpg")) == _group(frl, Path("lisa/lisa2.jpg"))
    more = "talking_heads/more"
    a, b = Path("cremad/cremad_1001_DFA_ANG_XX.mp4"), Path("cremad/cremad_1001_DFA_SAD_XX.mp4")
    assert _group(more, a) == _group(more, b) == "more:cremad_1001"


def test_sample_maker_is_seeded_and_clean_faces_have_empty_masks() -> None:
    face = _face()
    maker = SampleMaker(OccluderRenderer())
    a = maker(face, np.random.default_rng(3))
    b = maker(face, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    clean = SampleMaker(OccluderRenderer(), clean_probability=1.0, jitter=False, degrade=False)
    image, mask = clean(face, np.random.default_rng(0))
    assert not mask.any()
    assert np.array_equal(image, face) or np.array_equal(image, face[:, ::-1])


def test_real_look_lighting_keeps_clean_faces_clean() -> None:
    face = _face(4)
    lit = SampleMaker(
        OccluderRenderer(),
        clean_probability=1.0,
        jitter=False,
        degrade=False,
        lighting_probability=1.0,
    )
    changed = 0
    for seed in range(6):
        image, mask = lit(face, np.random.default_rng(seed))
        assert not mask.any()
        changed += not (np.array_equal(image, face) or np.array_equal(image, face[:, ::-1]))
    assert changed == 6
    # Off (v1, v2): the random stream and the samples are what they were.
    plain = SampleMaker(OccluderRenderer())
    a = plain(face, np.random.default_rng(9))
    b = SampleMaker(OccluderRenderer(), lighting_probability=0.0)(face, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_misalignment_moves_crop_and_mask_together_and_keeps_clean_faces_clean() -> None:
    face = _face(5)
    mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    mask[150:240, 60:196] = 1.0  # a face mask on the lower face
    face[mask > 0] = (235, 235, 235)  # white, so its place in the moved crop can be found
    zoomed = 0
    for seed in range(20):
        image, moved = _misalign(face, mask, np.random.default_rng(seed))
        white = np.all(image >= 225, axis=2)
        # The target is exactly where the occluder went (its resampled edge aside).
        inside = white[moved > 0].mean()
        assert inside > 0.97, (seed, inside)
        assert (white & (moved == 0)).sum() < 0.04 * max(1, int(white.sum())), seed
        zoomed += moved.sum() > 1.1 * mask.sum()
    assert zoomed >= 5  # often zoomed in, as on occluded faces, not just jittered
    # A clean face stays clean, and the maker draws it (recipe v4) for clean faces as well.
    maker = SampleMaker(
        OccluderRenderer(), clean_probability=1.0, degrade=False, misalign_probability=1.0
    )
    for seed in range(4):
        image, target = maker(_face(6), np.random.default_rng(seed))
        assert not target.any()
    # Off (v1-v3): the random stream and the samples are what they were.
    a = SampleMaker(OccluderRenderer())(face, np.random.default_rng(9))
    b = SampleMaker(OccluderRenderer(), misalign_probability=0.0)(face, np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_hard_faces_join_the_training_pool_at_their_share(tmp_path: Path) -> None:
    hard_dir = tmp_path / "hard"
    hard_dir.mkdir()
    np.save(hard_dir / "crops.npy", np.stack([_face(10 + i) for i in range(4)]))
    rows = [
        {"path": f"h{i}", "dataset": "hard", "group": f"h{i}", "split": split}
        for i, split in enumerate(["train", "train", "train", "test"])
    ]
    (hard_dir / "index.json").write_text(json.dumps({"misses": 0, "crops": rows}))
    faces = FaceSet(
        crops=np.stack([_face(i) for i in range(7)]),
        paths=tuple("abcdefg"),
        datasets=("toy",) * 7,
        groups=tuple("abcdefg"),
        splits=("train",) * 6 + ("val",),
    )
    train_indices = faces.select("train")
    config = TrainConfig(hard_faces=(str(hard_dir),), hard_share=0.5)
    pool, indices = _training_pool(faces, train_indices, config)
    assert len(pool) == 6 + 3  # the hard set's test face stays out
    assert np.array_equal(pool[6], _face(10))
    hard = np.count_nonzero(indices >= 6) / len(indices)
    assert abs(hard - 0.5) < 0.01
    alone, same = _training_pool(faces, train_indices, TrainConfig())
    assert alone is faces.crops and np.array_equal(same, train_indices)


def test_occluders_only_change_pixels_near_their_mask() -> None:
    face = _face(1)
    maker = SampleMaker(OccluderRenderer(), clean_probability=0.0, jitter=False, degrade=False)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        image, mask = maker(face, rng)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        # The maker flips half of the faces: compare with the one it started from.
        base = face if np.array_equal(image[~near], face[~near]) else face[:, ::-1]
        assert np.array_equal(image[~near], base[~near])
        assert mask.any()


def test_template_painting_follows_the_template_alpha() -> None:
    # A plain rectangle "mask" template with its anchors on the rectangle.
    alpha = np.zeros((100, 200), np.float32)
    alpha[10:90, 10:190] = 1.0
    anchors = np.array([[10, 20], [100, 10], [190, 20], [20, 80], [100, 90], [180, 80]], np.float32)
    template = MaskTemplate("box", np.full((100, 200, 3), 200, np.uint8), alpha, anchors)
    face = _face(2)
    image, mask = paint_template(face, template, np.random.default_rng(0))
    assert 0.1 < mask.mean() < 0.5
    assert mask[150, 128] == 1.0  # the mouth is under it
    assert mask[60, 128] == 0.0  # the eyes are not
    changed = np.abs(image.astype(int) - face.astype(int)).sum(axis=2) > 0
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not (changed & ~grown).any()


def test_loss_and_iou() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1.0
    good = (target * 2 - 1) * 8
    bad = -good
    assert segmentation_loss(good, target, 0.5) < segmentation_loss(bad, target, 0.5)
    assert batch_iou(good, target) == 1.0
    assert batch_iou(bad, target) == 0.0
    predicted = target.numpy()[:, 0] > 0.5
    score = score_masks(predicted, predicted)
    assert score.iou == score.mean_image_iou == 1.0


def test_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    faces_dir = tmp_path / "faces"
    faces_dir.mkdir()
    crops = np.stack([_face(i) for i in range(6)])
    np.save(faces_dir / "crops.npy", crops)
    rows = [
        {"path": f"{i}.png", "dataset": "toy", "group": f"g{i}", "split": split}
        for i, split in enumerate(["train", "train", "train", "val", "val", "test"])
    ]
    (faces_dir / "index.json").write_text(json.dumps({"misses": 0, "crops": rows}))
    maker = SampleMaker(OccluderRenderer(), degrade=False)
    config = TrainConfig(steps=2, batch=2, warmup_steps=1, val_samples=2, net=TINY)
    run = tmp_path / "run"
    train(faces_dir, run, maker, config)
    first = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [2]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 2
    # Asking for more steps carries on from the checkpoint rather than starting again.
    train(
        faces_dir,
        run,
        maker,
        TrainConfig(steps=3, batch=2, warmup_steps=1, val_samples=2, net=TINY),
    )
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]


def test_face_set_selects_by_split_and_dataset() -> None:
    faces = FaceSet(
        crops=np.zeros((3, 1, 1, 3), np.uint8),
        paths=("a", "b", "c"),
        datasets=("x", "y", "x"),
        groups=("1", "2", "3"),
        splits=("train", "test", "test"),
    )
    assert faces.select("test").tolist() == [1, 2]
    assert faces.select("test", ["x"]).tolist() == [2]


def test_contact_sheet_has_one_tile_per_face() -> None:
    crops = np.stack([_face(i) for i in range(3)])
    probabilities = [np.zeros((CROP_SIZE, CROP_SIZE), np.float32)] * 3
    sheet = contact_sheet(crops, probabilities, [True, False, True], columns=2)
    assert sheet.shape == (256, 256, 3)


@pytest.mark.realdata
def test_real_sources_and_templates(shared_data: Path) -> None:
    sources = list_sources(shared_data)
    datasets = {s.dataset for s in sources}
    assert datasets == {
        "talking_heads_pcavs",
        "talking_heads_grid",
        "identities_deepface",
        "identities_orl",
        "faces_unmasked_fmd",
    }
    assert not any("masked/fmd" in str(s.path) and "unmasked" not in str(s.path) for s in sources)
    templates = load_mask_templates(shared_data / "occluders" / "maskthface")
    assert len(templates) >= 18
    assert all(t.anchors.shape == (6, 2) for t in templates)


@pytest.mark.realdata
def test_shipped_model_on_a_few_real_photos(shared_data: Path) -> None:
    """A regression guard on real photos (the full evaluation is
    ``python -m training.segmenter evaluate``; its numbers are in the model card)."""
    from stream.detect import FaceDetector
    from stream.mask_detect import MaskDetector
    from training.segmenter import aligned_face

    finder = FaceDetector()
    detector = MaskDetector()

    def flagged(paths: list[Path]) -> float:
        images = [np.asarray(cv2.imread(str(p), cv2.IMREAD_COLOR), np.uint8) for p in paths]
        crops = [aligned_face(finder, image) for image in images]
        found = np.stack([c for c in crops if c is not None])
        return float(np.mean([c.covered for c in detector.analyse_still(found)]))

    masked = sorted((shared_data / "faces" / "masked" / "fmd").glob("*.jpg"))[::12][:30]
    unmasked = [
        p
        for p in sorted((shared_data / "faces" / "unmasked" / "fmd").glob("*.jpg"))
        if split_of(_group("faces/unmasked/fmd", p)) == "test"
    ][::8][:30]
    assert flagged(masked) >= 0.8
    assert flagged(unmasked) <= 0.1


def test_v5_draws_hands_about_twice_as_often_as_v2() -> None:
    def hand_share(mixture: MaskMixture) -> float:
        rng = np.random.default_rng(5)
        kinds = [mixture.sample(rng).kind for _ in range(400)]
        return sum(k == ShapeKind.HAND for k in kinds) / len(kinds)

    assert 0.2 < hand_share(v2_mixture()) < 0.3
    assert 0.4 < hand_share(v5_mixture()) < 0.5
