"""The two ONNX graphs match torch (max relative error <= 1e-4) for lite and paper, keep a
dynamic face batch, and carry their metadata; exports are cached once per weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from avinpaint.config import preset
from avinpaint.model import Generator
from engines.cache import EngineCache
from engines.export import (
    FEATURE_NAMES,
    ExportedModel,
    ExportOptions,
    example_faces,
    example_speaker_input,
    export_cached,
    export_key,
    export_model,
    load_exported,
    max_relative_error,
    read_graph,
    weights_sha256,
)

TOLERANCE = 1e-4


def _model(name: str, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(preset(name)).eval()


def _session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generator, ExportedModel]:
    torch.set_num_threads(1)
    model = _model("lite")
    options = ExportOptions(audio_face=True, identity_code=True)
    return model, export_model(model, tmp_path_factory.mktemp("lite"), options)


def _check_parity(model: Generator, exported: ExportedModel, batch: int) -> dict[str, float]:
    """Relative error of every output of both graphs against torch."""
    speaker_input = example_speaker_input(model.config, seed=1)
    face, mask = example_faces(model.config, batch, seed=2)
    with torch.no_grad():
        features = model.speaker_features(torch.from_numpy(speaker_input))
        expected = model.inpaint(torch.from_numpy(face), torch.from_numpy(mask), features)
    speaker = _session(exported.speaker.path)
    names = list(exported.speaker.spec.outputs)
    got = dict(zip(names, speaker.run(names, {"speaker_input": speaker_input}), strict=True))
    errors = {n: max_relative_error(got[n], getattr(features, n).numpy()) for n in names}
    feed = {"face": face, "mask": mask, **{n: got[n] for n in FEATURE_NAMES}}
    inpaint = _session(exported.inpaint.path)
    outs = list(exported.inpaint.spec.outputs)
    result = dict(zip(outs, inpaint.run(outs, feed), strict=True))
    errors["inpainted"] = max_relative_error(result["inpainted"], expected.inpainted.numpy())
    if "identity_code" in result:
        reference = expected.identity_code.numpy()
        errors["identity_code"] = max_relative_error(result["identity_code"], reference)
    return errors


@pytest.mark.parametrize("batch", [1, 3])
def test_lite_parity_at_any_batch(lite: tuple[Generator, ExportedModel], batch: int) -> None:
    model, exported = lite
    errors = _check_parity(model, exported, batch)
    assert set(errors) == {*FEATURE_NAMES, "audio_face", "inpainted", "identity_code"}
    assert max(errors.values()) <= TOLERANCE, errors


def test_paper_parity_batch_1(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = _model("paper")
    exported = export_model(model, tmp_path)  # default options: no audio face
    assert exported.speaker.spec.outputs == FEATURE_NAMES
    assert exported.inpaint.spec.outputs == ("inpainted", "identity_code")
    errors = _check_parity(model, exported, batch=1)
    assert max(errors.values()) <= TOLERANCE, errors


def test_inpaint_graph_keeps_known_pixels(lite: tuple[Generator, ExportedModel]) -> None:
    model, exported = lite
    face, mask = example_faces(model.config, 2, seed=3)
    with torch.no_grad():
        features = model.speaker_features(torch.from_numpy(example_speaker_input(model.config)))
    feed = {"face": face, "mask": mask, **{n: getattr(features, n).numpy() for n in FEATURE_NAMES}}
    [inpainted] = _session(exported.inpaint.path).run(["inpainted"], feed)
    known = np.broadcast_to(mask == 0, face.shape)
    np.testing.assert_array_equal(inpainted[known], face[known])


def test_metadata_round_trip(lite: tuple[Generator, ExportedModel]) -> None:
    model, exported = lite
    config, graph = read_graph(exported.inpaint.path)
    assert config == model.config
    assert graph == exported.inpaint
    assert graph.spec.dynamic == ("face", "mask", "inpainted", "identity_code")
    again = load_exported(exported.speaker.path.parent)
    assert again == exported


def test_read_graph_refuses_foreign_onnx(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(tmp_path / "f.onnx"))
    with pytest.raises(ValueError, match="not an avstream graph"):
        read_graph(tmp_path / "f.onnx")
    with pytest.raises(ValueError, match="no exported graph"):
        read_graph(tmp_path / "missing.onnx")


def test_export_needs_eval_mode_and_leaves_it(tmp_path: Path) -> None:
    model = _model("lite")
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        export_model(model, tmp_path)
    model.eval()
    export_model(model, tmp_path)
    assert not model.training  # the exporter restores modes: it must not flip to training
    assert not list(tmp_path.glob(".*partial*"))


def test_export_cached_exports_once_per_weights(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    model = _model("lite")
    first = export_cached(model, cache)
    second = export_cached(model, cache)
    assert first == second
    assert len(cache.entries(["onnx"])) == 1
    other = _model("lite", seed=1)
    assert weights_sha256(other) != weights_sha256(model)
    assert export_key(other) != export_key(model)
    third = export_cached(other, cache)
    assert third.inpaint.sha256 != first.inpaint.sha256
    assert len(cache.entries(["onnx"])) == 2


def test_max_relative_error() -> None:
    assert max_relative_error([1.0, -2.0], [1.0, -2.0]) == 0.0
    assert max_relative_error([1.0, -2.1], [1.0, -2.0]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="shapes"):
        max_relative_error([1.0], [1.0, 2.0])
