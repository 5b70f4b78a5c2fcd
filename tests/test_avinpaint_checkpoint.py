"""Checkpoint files (safetensors + config inside) and the official-checkpoint converter."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from avinpaint.checkpoint import (
    FORMAT,
    CheckpointError,
    StateDictMismatchError,
    load,
    read_config,
    read_metadata,
    resolve,
    save,
)
from avinpaint.config import LITE, ModelConfig
from avinpaint.convert import (
    DISCARDED,
    OFFICIAL_TO_OURS,
    convert_audioface,
    main,
    map_official_state_dict,
    official_shapes,
)
from avinpaint.model import Generator

torch.set_num_threads(1)

SMALL = ModelConfig(
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


def _trained_like(config: ModelConfig) -> Generator:
    """A model whose BatchNorm statistics are not the defaults, so a round trip that lost
    the buffers would show."""
    torch.manual_seed(0)
    model = Generator(config)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_()
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("num_batches_tracked"):
            buffer.fill_(7)
    return model.eval()


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


# --- our checkpoints -----------------------------------------------------------------


def test_save_load_round_trip_keeps_weights_config_and_eval_mode(tmp_path: Path) -> None:
    model = _trained_like(SMALL)
    path = save(model, tmp_path / "small.safetensors", {"note": "test"})
    assert read_config(path) == SMALL
    assert read_metadata(path)["note"] == "test"
    loaded = load(path)
    assert loaded.config == SMALL and not loaded.training
    _assert_same_state(model, loaded)
    assert loaded.voice is not None
    assert not any(p.requires_grad for p in loaded.voice.parameters())
    assert all(p.requires_grad for p in loaded.decoder.parameters())
    x = torch.rand(1, 3, 256, 256)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 100:150, 80:180] = 1
    audio = torch.randn(1, 64, 100)
    with torch.no_grad():
        assert torch.equal(model(x, mask, audio).inpainted, loaded(x, mask, audio).inpainted)
    assert not list(tmp_path.glob(".*partial*"))


def test_lite_round_trip(tmp_path: Path) -> None:
    model = _trained_like(LITE)
    loaded = load(save(model, tmp_path / "lite.safetensors"))
    assert loaded.config == LITE and loaded.voice is None
    _assert_same_state(model, loaded)


def test_half_precision_file_is_half_the_size_and_loads_as_float32(tmp_path: Path) -> None:
    model = _trained_like(LITE)
    full = save(model, tmp_path / "full.safetensors")
    half = save(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert read_metadata(half)["precision"] == "float16"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load(half)
    for name, tensor in loaded.state_dict().items():
        original = model.state_dict()[name]
        assert tensor.dtype == original.dtype, name  # upcast; integer buffers untouched
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, original, rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(tensor, original), name
    with pytest.raises(ValueError, match="floating-point"):
        save(model, tmp_path / "int.safetensors", dtype=torch.int8)


def test_load_reports_every_missing_unexpected_and_mis_shaped_tensor(tmp_path: Path) -> None:
    path = save(Generator(SMALL), tmp_path / "a.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del tensors["decoder.ups.3.bias"]
    del tensors["voice.norms.0.running_var"]
    tensors["decoder.extra.weight"] = torch.zeros(2)
    tensors["fusion.linear.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(StateDictMismatchError) as info:
        load(path)
    message = str(info.value)
    for name in (
        "decoder.ups.3.bias",
        "voice.norms.0.running_var",
        "decoder.extra.weight",
        "fusion.linear.weight (file [3, 3], model [8, 16])",
    ):
        assert name in message
    assert info.value.missing == ["voice.norms.0.running_var", "decoder.ups.3.bias"]
    assert info.value.unexpected == ["decoder.extra.weight"]


def test_load_rejects_files_that_are_not_ours(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an avinpaint generator checkpoint"):
        load(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load(garbage)
    bad_config = tmp_path / "bad_config.safetensors"
    config = SMALL.to_dict() | {"depth": 3}
    meta = {"format": FORMAT, "format_version": "1", "config": json.dumps(config)}
    save_file({"w": torch.zeros(1)}, str(bad_config), metadata=meta)
    with pytest.raises(CheckpointError, match="unknown keys depth"):
        load(bad_config)


def test_names_without_shipped_weights_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # lite weights ship now (issue 8): point the shipped folder at an empty one.
    monkeypatch.setattr(
        "avinpaint.checkpoint.shipped_path", lambda name: tmp_path / f"{name}.safetensors"
    )
    with pytest.raises(CheckpointError, match="no weights for preset 'lite' ship"):
        resolve("lite")
    with pytest.raises(CheckpointError, match="avstream convert audioface"):
        resolve("paper")
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a preset"):
        resolve("no/such/file.safetensors")


def test_save_refuses_reserved_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save(Generator(SMALL), tmp_path / "x.safetensors", {"config": "{}"})


# --- converter -----------------------------------------------------------------------


def _official_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with every official name and shape (the fixture's key list), each tensor
    filled with a value of its own so that a swapped mapping would show."""
    state: dict[str, torch.Tensor] = {}
    for i, (name, shape) in enumerate(official_shapes().items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(i, dtype=torch.int64)
        else:
            state[name] = torch.full(shape, float(i) / 1000.0)
    return state


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("official") / "G_500000.pth"
    torch.save(_official_state_dict(), path)
    return path


def test_official_key_list_matches_the_fixture(shared_fixtures: Path) -> None:
    rule = shared_fixtures / "audioface_parity" / "weights_rule.json"
    if not rule.is_file():
        pytest.skip("audioface_parity fixture is not present")
    entries = json.loads(rule.read_text())["entries"]
    assert {e["name"]: tuple(e["shape"]) for e in entries} == official_shapes()


def test_mapping_table_is_one_to_one_and_covers_the_model() -> None:
    assert len(set(OFFICIAL_TO_OURS.values())) == len(OFFICIAL_TO_OURS)
    assert len(official_shapes()) == 210
    assert set(DISCARDED) <= set(official_shapes())


def test_convert_round_trips(official_pth: Path, tmp_path: Path) -> None:
    out = convert_audioface(official_pth, tmp_path / "paper.safetensors")
    metadata = read_metadata(out)
    assert metadata["source"] == "G_500000.pth" and len(metadata["source_sha256"]) == 64
    model = load(out)
    official = _official_state_dict()
    ours = model.state_dict()
    assert len(ours) == len(official) - len(DISCARDED)
    for name, tensor in official.items():
        if name in DISCARDED:
            continue
        module, leaf = name.rsplit(".", 1)
        mapped = ours[f"{OFFICIAL_TO_OURS[module]}.{leaf}"]
        assert mapped.dtype == tensor.dtype and torch.equal(mapped, tensor), name
    assert ours["decoder.fusions.0.in_proj.weight"].shape == (256, 512, 1, 1)


def test_converter_names_every_missing_unexpected_and_mis_shaped_key() -> None:
    state = _official_state_dict()
    del state["coarse.fusion3.global_att.5.running_var"]
    del state["audioFeat.Gnet.model.10.bias"]  # discarded, but still required
    state["coarse.conv_plus.weight"] = torch.zeros(1)
    state["mlp.2.weight"] = torch.zeros(2048, 512)
    with pytest.raises(StateDictMismatchError) as info:
        map_official_state_dict(state, "G.pth")
    message = str(info.value)
    assert message.startswith("G.pth does not match the model:")
    assert "missing (2): coarse.fusion3.global_att.5.running_var, audioFeat.Gnet.model.10.bias" in (
        message
    )
    assert "unexpected (1): coarse.conv_plus.weight" in message
    assert "mlp.2.weight (file [2048, 512], model [2048, 1024])" in message


def test_converter_refuses_pickles_that_are_not_weights_only(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pathlib.Path.mkdir, (sentinel,))

    path = tmp_path / "evil.pth"
    torch.save({"coarse.en_1.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="never unpickled") as info:
        convert_audioface(path, tmp_path / "out.safetensors")
    assert "Unsupported global" in str(info.value)
    assert not sentinel.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_rejects_other_files(tmp_path: Path) -> None:
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, nested)
    with pytest.raises(CheckpointError, match=r"not a flat state dict.*epoch, state_dict"):
        convert_audioface(nested, tmp_path / "o.safetensors")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        convert_audioface(junk, tmp_path / "o.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_audioface(tmp_path / "missing.pth", tmp_path / "o.safetensors")


def test_main_exit_codes(
    official_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "paper.safetensors"
    assert main([str(official_pth), "-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.pth"), "-o", str(out)]) == 1
    assert "avstream: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([str(official_pth)])
    assert info.value.code == 2


def test_package_api_is_lazy_and_complete() -> None:
    import subprocess
    import sys

    import avinpaint

    code = "import sys, avinpaint.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the video pipeline's constants do not pull in torch
    for name in avinpaint.__all__:
        assert getattr(avinpaint, name) is not None
    with pytest.raises(AttributeError):
        avinpaint.nope  # noqa: B018
