"""The generator: shapes, speaker/face split, presets, cost, and parity with the official code.

The parity tests rebuild the official weights from the fixture's deterministic rule (no
weight file), load them through the converter's name mapping and match every saved output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avinpaint.checkpoint import build
from avinpaint.config import GE2E_DIM, LITE, PAPER, ModelConfig, preset
from avinpaint.convert import OFFICIAL_TO_OURS, map_official_state_dict, official_shapes
from avinpaint.model import Generator, PartCost, part_costs

torch.set_num_threads(1)

ATOL = 1e-4  # the fixture's suggested tolerance: ~6x its float32-vs-float64 gap

# A tiny config for fast shape and behaviour tests (the same code path as the presets).
TINY = ModelConfig(
    face_widths=(4, 8, 8, 8, 8, 8, 8, 8),
    mask_input=True,
    speaker_encoder="wen2019",
    speaker_dim=8,
    voice_widths=(8, 8),
    n_mels=64,
    n_frames=100,
    audio_widths=(16, 8, 8, 8, 4, 4, 4),
    fusion_reduction=4,
    identity_hidden=8,
    identity_dim=6,
)


def _box_mask(batch: int) -> torch.Tensor:
    mask = torch.zeros(batch, 1, 256, 256)
    mask[:, :, 89:217, 64:192] = 1.0  # the paper's hole
    return mask


# --- config --------------------------------------------------------------------------


def test_config_round_trips_through_a_dict() -> None:
    for config in (PAPER, LITE, TINY):
        data = json.loads(json.dumps(config.to_dict()))
        assert ModelConfig.from_dict(data) == config


def test_config_from_dict_rejects_unknown_and_missing_keys() -> None:
    data = PAPER.to_dict()
    data["base_width"] = 32
    del data["speaker_dim"]
    with pytest.raises(ValueError, match=r"unknown keys base_width.*missing keys speaker_dim"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"face_widths": (64, 128)}, "face_widths needs 8"),
        ({"speaker_encoder": "xvector"}, "speaker_encoder must be one of"),
        ({"speaker_encoder": "ge2e"}, "ge2e embeddings are 256-d"),
        ({"mask_input": 1}, "mask_input must be a bool"),
        ({"identity_dim": 0}, "identity_dim must be a positive int"),
        ({"audio_widths": (1024, 512, 256, 128, 64, 2, 16)}, "128 px"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PAPER, **changes)


def test_presets() -> None:
    assert preset("paper") == PAPER and preset("lite") == LITE
    assert not PAPER.mask_input and LITE.mask_input
    assert LITE.speaker_encoder == "ge2e" and LITE.speaker_dim == GE2E_DIM
    with pytest.raises(ValueError, match="presets: paper, lite"):
        preset("huge")


# --- behaviour -----------------------------------------------------------------------


def test_forward_shapes_and_compositing() -> None:
    torch.manual_seed(0)
    model = Generator(TINY).eval()
    face = torch.rand(2, 3, 256, 256) * 2 - 1
    mask = _box_mask(2)
    log_mel = torch.randn(2, 64, 100)
    with torch.no_grad():
        out = model(face, mask, log_mel)
    assert out.inpainted.shape == out.raw.shape == out.audio_face.shape == (2, 3, 256, 256)
    assert out.identity_code.shape == (2, 6)
    assert out.speaker_embedding.shape == (2, 8)
    torch.testing.assert_close(out.speaker_embedding.norm(dim=1), torch.ones(2))
    known = mask == 0
    hole = ~known.expand_as(face)
    assert torch.equal(out.inpainted[known.expand_as(face)], face[known.expand_as(face)])
    assert torch.equal(out.inpainted[hole], out.raw[hole])
    assert out.raw.abs().max() <= 1.0


def test_hole_content_never_reaches_the_network() -> None:
    model = Generator(TINY).eval()
    face = torch.rand(1, 3, 256, 256) * 2 - 1
    mask = _box_mask(1)
    log_mel = torch.randn(1, 64, 100)
    with torch.no_grad():
        a = model(face, mask, log_mel)
        b = model(face * (1 - mask) + 5.0 * mask, mask, log_mel)
    assert torch.equal(a.inpainted, b.inpainted)


def test_cached_speaker_features_match_the_full_pass_and_broadcast() -> None:
    torch.manual_seed(1)
    model = Generator(TINY).eval()
    faces = torch.rand(3, 3, 256, 256) * 2 - 1
    masks = _box_mask(3)
    log_mel = torch.randn(1, 64, 100)
    with torch.no_grad():
        features = model.speaker_features(log_mel)  # batch 1, shared by 3 faces
        cached = model.inpaint(faces, masks, features)
        for i in range(3):
            full = model(faces[i : i + 1], masks[i : i + 1], log_mel)
            torch.testing.assert_close(cached.inpainted[i : i + 1], full.inpainted)
            torch.testing.assert_close(cached.identity_code[i : i + 1], full.identity_code)
    assert features.x16.shape == (1, 8, 16, 16) and features.x128.shape == (1, 4, 128, 128)


def test_external_speaker_embedding_has_no_voice_net() -> None:
    config = dataclasses.replace(TINY, speaker_encoder="ge2e", speaker_dim=GE2E_DIM)
    model = Generator(config).eval()
    assert model.voice is None
    embedding = torch.randn(2, GE2E_DIM)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 256, 256), _box_mask(2), embedding)
    torch.testing.assert_close(out.speaker_embedding, torch.nn.functional.normalize(embedding))
    with pytest.raises(ValueError, match=r"embedding \(B, 256\)"):
        model.speaker_features(torch.randn(1, 64, 100))


def test_bad_inputs_are_named() -> None:
    model = Generator(TINY).eval()
    features = model.speaker_features(torch.randn(2, 64, 100))
    with pytest.raises(ValueError, match=r"face must be \(B, 3, 256, 256\)"):
        model.inpaint(torch.zeros(1, 3, 128, 128), torch.zeros(1, 1, 128, 128), features)
    with pytest.raises(ValueError, match=r"mask must be \(1, 1, 256, 256\)"):
        model.inpaint(torch.zeros(1, 3, 256, 256), torch.zeros(1, 256, 256), features)
    with pytest.raises(ValueError, match="speaker features have batch 2, faces 3"):
        model.inpaint(torch.zeros(3, 3, 256, 256), _box_mask(3), features)
    with pytest.raises(ValueError, match=r"log-mel window \(B, 64, T\)"):
        model.speaker_features(torch.randn(1, 40, 100))


def test_frozen_voice_net_stays_in_eval_mode_and_gets_no_gradient() -> None:
    model = Generator(TINY).train()
    assert model.voice is not None
    assert model.training and model.decoder.training and not model.voice.training
    assert not any(p.requires_grad for p in model.voice.parameters())
    out = model(torch.rand(2, 3, 256, 256), _box_mask(2), torch.randn(2, 64, 100))
    (out.raw.mean() + out.audio_face.mean() + out.identity_code.mean()).backward()
    assert all(p.grad is None for p in model.voice.parameters())
    assert model.audio_decoder.ups[0].weight.grad is not None
    trainable = dataclasses.replace(TINY, freeze_voice=False)
    assert Generator(trainable).train().voice.training  # type: ignore[union-attr]


# --- size and cost -------------------------------------------------------------------

PER_FACE = ("encoder", "fusion", "decoder", "identity_head")


def _costs(config: ModelConfig) -> dict[str, PartCost]:
    return {c.name: c for c in part_costs(Generator(config).eval())}


def test_paper_size_and_cost_match_the_official_network() -> None:
    costs = _costs(PAPER)
    # Official InpaintNet: 74,050,745 parameters, of which 195 are Wen's discarded RGB head.
    assert sum(c.params for c in costs.values()) + 64 * 3 + 3 == 74_050_745
    assert costs["voice"].params == 2_670_720
    assert costs["encoder"].params == 19_535_808
    # 16.55 GFLOPs (2 x MACs) per face in the fixture, with the speaker part included.
    total = sum(c.flops for c in costs.values())
    assert 16.4e9 < total < 16.6e9
    assert 14.2e9 < sum(costs[n].flops for n in PER_FACE) < 14.5e9


def test_lite_fits_the_cpu_budget() -> None:
    costs = _costs(LITE)
    assert sum(costs[n].flops for n in PER_FACE) <= 2e9
    assert "voice" not in costs


# --- parity with the official code -----------------------------------------------------

CASE1_INTERMEDIATES = ("x16", "x32", "x64", "x128", "face_code", "mid_feat", "coarse_raw")
OUTPUTS = ("inpainted", "audio_face", "face_id", "voice_embedding")


def _rule_tensor(shape: list[int], dtype: str, rule: dict[str, Any]) -> torch.Tensor:
    """One entry of weights_rule.json (README section 1.1)."""
    kind = rule["kind"]
    if kind == "zeros":
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    if kind == "ones":
        return torch.ones(shape, dtype=getattr(torch, dtype))
    generator = torch.Generator().manual_seed(rule["seed"])
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if kind == "randn":
        tensor = noise * rule["std"]
        return tensor + rule["mean"] if rule["mean"] != 0 else tensor
    if kind == "one_plus_abs_randn":
        return 1 + noise.abs() * rule["std"]
    raise AssertionError(f"unknown rule kind {kind}")


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _rule_weights(rule_json: dict[str, Any], variant: str | None) -> dict[str, torch.Tensor]:
    """The official state dict the fixture was made with; checksums checked entry by entry
    so that a change in torch's random stream is reported as such, not as a model bug."""
    entries = {e["name"]: e for e in rule_json["entries"]}
    rules = {name: (e["rule"], e["check"]) for name, e in entries.items()}
    if variant is not None:
        for override in rule_json["variants"][variant]["overrides"]:
            rules[override["name"]] = (override["rule"], override["check"])
    weights: dict[str, torch.Tensor] = {}
    bad = []
    for name, (rule, check) in rules.items():
        tensor = _rule_tensor(entries[name]["shape"], entries[name]["dtype"], rule)
        if _sha256(tensor) != check["sha256_of_raw_bytes"]:
            bad.append(name)
        weights[name] = tensor
    if bad:
        pytest.fail(
            f"weights rule checksums differ for {len(bad)} entries (e.g. {bad[0]}): this torch "
            f"({torch.__version__}) draws different random numbers than "
            f"{rule_json['torch_version_used']}; the model is not at fault"
        )
    return weights


def _load(folder: Path, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(folder / f"{name}.npy"))


@pytest.fixture(scope="module")
def parity(shared_fixtures: Path) -> Path:
    folder = shared_fixtures / "audioface_parity"
    if not (folder / "weights_rule.json").is_file():
        pytest.skip("audioface_parity fixture is not present")
    return folder


@pytest.fixture(scope="module")
def rule_json(parity: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((parity / "weights_rule.json").read_text())
    return data


@pytest.fixture(scope="module")
def paper_model(rule_json: dict[str, Any]) -> Generator:
    official = _rule_weights(rule_json, variant=None)
    return build(PAPER, map_official_state_dict(official, "rule weights"), "rule weights")


def _run(model: Generator, inputs: Path) -> dict[str, torch.Tensor]:
    face = _load(inputs, "masked_image")
    mask = _load(inputs, "mask")
    audio = _load(inputs, "audio_input")
    with torch.no_grad():
        features = model.speaker_features(audio)
        out = model.inpaint(face, mask, features)
        assert model.voice is not None
        raw_embedding = model.voice(audio)
    return {
        "inpainted": out.inpainted,
        "audio_face": features.audio_face,
        "face_id": out.identity_code,
        "voice_embedding": features.embedding,
        "voice_embedding_raw": raw_embedding,
        "x16": features.x16,
        "x32": features.x32,
        "x64": features.x64,
        "x128": features.x128,
        "face_code": out.face_code,
        "mid_feat": out.fused_code,
        "coarse_raw": out.raw,
    }


def _assert_matches(got: dict[str, torch.Tensor], folder: Path, names: tuple[str, ...]) -> None:
    diffs = {}
    for name in names:
        want = _load(folder, name)
        assert got[name].shape == want.shape, name
        diffs[name] = float((got[name] - want).abs().max())
    assert max(diffs.values()) <= ATOL, diffs


def test_rule_covers_exactly_the_official_names(rule_json: dict[str, Any]) -> None:
    shapes = {e["name"]: tuple(e["shape"]) for e in rule_json["entries"]}
    assert shapes == official_shapes()
    assert rule_json["num_entries"] == len(shapes) == 210
    assert len(set(OFFICIAL_TO_OURS.values())) == len(OFFICIAL_TO_OURS)


def test_paper_matches_case1_with_intermediates(paper_model: Generator, parity: Path) -> None:
    got = _run(paper_model, parity / "case1")
    _assert_matches(got, parity / "case1", OUTPUTS + CASE1_INTERMEDIATES + ("voice_embedding_raw",))


def test_paper_matches_case2(paper_model: Generator, parity: Path) -> None:
    _assert_matches(_run(paper_model, parity / "case2"), parity / "case2", OUTPUTS)


def test_paper_forward_returns_the_same_as_the_split(paper_model: Generator, parity: Path) -> None:
    case = parity / "case2"
    with torch.no_grad():
        out = paper_model(
            _load(case, "masked_image"), _load(case, "mask"), _load(case, "audio_input")
        )
    assert float((out.inpainted - _load(case, "inpainted")).abs().max()) <= ATOL
    assert float((out.identity_code - _load(case, "face_id")).abs().max()) <= ATOL


def test_paper_matches_case3_with_batchnorm_statistics(
    rule_json: dict[str, Any], parity: Path
) -> None:
    official = _rule_weights(rule_json, variant="bnstats")
    model = build(PAPER, map_official_state_dict(official, "bnstats weights"), "bnstats weights")
    got = _run(model, parity / "case1")  # case3 runs case1's inputs
    _assert_matches(got, parity / "case3_bnstats", OUTPUTS)
