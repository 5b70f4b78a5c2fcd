"""``avstream engines build|list|clean`` and the ``--backend`` options, through the functions
``stream.cli`` wires in."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch

from avinpaint.checkpoint import save
from avinpaint.config import preset
from avinpaint.model import Generator
from engines.backends import BACKEND_NAMES, PREFERENCES
from stream.engines_cli import (
    BACKEND_CHOICES,
    add_backend_arguments,
    add_engines_subparser,
    open_model_inpainter,
    run_engines,
)
from stream.errors import AvstreamError, UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avstream")
    sub = parser.add_subparsers(dest="command", required=True)
    add_engines_subparser(sub, argparse.ArgumentParser)
    process = sub.add_parser("process")
    add_backend_arguments(process)
    return parser


def _run(*argv: str) -> str:
    out = io.StringIO()
    assert run_engines(_parser().parse_args(["engines", *argv]), out) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "lite.safetensors"
    save(Generator(preset("lite")).eval(), path)
    return path


def test_backend_choices_match_the_backends() -> None:
    expected = (*PREFERENCES, *(n for n in BACKEND_NAMES if n not in PREFERENCES))
    assert expected == BACKEND_CHOICES


def test_build_list_clean(checkpoint: Path, tmp_path: Path) -> None:
    cache = ["--engine-cache", str(tmp_path)]
    assert "no cached graphs" in _run("list", *cache)
    built = _run("build", "--model", str(checkpoint), "--onnx-only", *cache)
    assert built.startswith("onnx fp32: ") and "inpaint.onnx" in built
    assert _run("build", "--model", str(checkpoint), "--onnx-only", *cache) == built  # cached
    listing = _run("list", *cache)
    assert listing.startswith("onnx") and "speaker+inpaint" in listing
    [row] = json.loads(_run("list", "--json", *cache))
    assert row["kind"] == "onnx" and row["size_bytes"] > 1_000_000
    assert _run("clean", "--kind", "tensorrt", *cache).startswith("removed 0 item(s)")
    assert _run("clean", *cache).startswith("removed 1 item(s)")
    assert "no cached graphs" in _run("list", *cache)


def test_build_fp16_exports_both_graphs(checkpoint: Path, tmp_path: Path) -> None:
    cache = ["--engine-cache", str(tmp_path)]
    built = _run("build", "--model", str(checkpoint), "--onnx-only", "--precision", "fp16", *cache)
    assert [line.split(":")[0] for line in built.splitlines()] == ["onnx fp32", "onnx fp16"]
    rows = json.loads(_run("list", "--json", *cache))
    sizes = {row["info"]["precision"]: row["size_bytes"] for row in rows}
    assert sorted(sizes) == ["fp16", "fp32"]
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.55  # FP16 weights: half the bytes
    assert " fp16 " in _run("list", *cache)


def test_build_without_tensorrt_says_why(checkpoint: Path, tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["engines", "build", "--model", str(checkpoint), "--engine-cache", str(tmp_path)]
    )
    with pytest.raises(AvstreamError, match=r"cannot build TensorRT engines here: .*--onnx-only"):
        run_engines(args, io.StringIO())


def test_missing_model_is_one_line_error(tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["engines", "build", "--onnx-only", "--model", str(tmp_path / "none.safetensors")]
    )
    with pytest.raises(AvstreamError, match="neither a checkpoint file nor a preset"):
        run_engines(args, io.StringIO())


def test_backend_option_opens_a_model_inpainter(checkpoint: Path, tmp_path: Path) -> None:
    base = ["process", "--model", str(checkpoint), "--engine-cache", str(tmp_path)]
    with open_model_inpainter(_parser().parse_args([*base, "--backend", "torch"])) as inpainter:
        assert inpainter.name == "avinpaint-torch-cpu"
    args = _parser().parse_args([*base, "--backend", "onnxruntime"])
    with open_model_inpainter(args, threads=1) as inpainter:
        assert inpainter.name == "avinpaint-onnxruntime-cpu"
    with pytest.raises(AvstreamError, match="no backend for 'tensorrt'"):
        open_model_inpainter(_parser().parse_args([*base, "--backend", "tensorrt"]))
    with pytest.raises(UsageError, match="--max-batch"):
        open_model_inpainter(_parser().parse_args([*base, "--max-batch", "0"]))
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--backend", "cuda"])
