"""Every TensorRT name ``engines.tensorrt`` uses exists in TensorRT 10 and in TensorRT 11.

``engines.tensorrt.TENSORRT_API`` lists them (``Class.member``). Statically, everywhere: the
names the module's code touches (read with ``ast``) are all in that list, and every part of
every listed name is bound by both the 10.16 and the 11.4 ``tensorrt-cu12-bindings`` wheels
(``tests/data/tensorrt_names/*.txt``, made by ``tools/tensorrt_names.py``; the wheels hold
no GPU libraries and do not import without them, so the lists come from the compiled
module's strings). Where ``tensorrt`` imports, the listed names are looked up on it for real.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable
from pathlib import Path

import pytest

from engines.tensorrt import TENSORRT_API

ROOT = Path(__file__).resolve().parent.parent
NAMES = Path(__file__).parent / "data" / "tensorrt_names"
VERSIONS = ("10.16.1.11", "11.4.0.106")

TRT_OBJECTS = frozenset(
    {"builder", "network", "parser", "builder_config", "optimisation", "timing", "network_input"}
)
"""Local variables of ``engines.tensorrt`` that hold TensorRT objects."""

TRT_ATTRIBUTES = frozenset({"_engine", "_context", "_runtime"})
"""``self.`` attributes of ``engines.tensorrt`` that hold TensorRT objects."""

REMOVED_IN_11 = (
    "BuilderFlag.FP16",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
    "ILayer.set_output_type",
)
"""What the TensorRT 10-only build used: gone from the 11.x bindings."""


def binding_names(version: str) -> frozenset[str]:
    """The identifiers of one version's bindings (``tools/tensorrt_names.py``)."""
    return frozenset((NAMES / f"{version}.txt").read_text().split())


def present(part: str, names: frozenset[str]) -> bool:
    """Whether ``part`` is bound: one of the names, or the tail of one (the linker stores a
    string that ends another string only once)."""
    return part in names or any(name.endswith(part) for name in names)


def missing(api: Iterable[str], names: frozenset[str]) -> list[str]:
    """The entries of ``api`` with a dotted part that ``names`` does not bind."""
    return sorted(e for e in api if not all(present(p, names) for p in e.split(".")))


def used_names(source: str) -> tuple[set[str], set[str]]:
    """(``trt.`` chains without ``trt.``, member names used on TensorRT objects) in ``source``."""
    chains: set[str] = set()
    members: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        parts = [node.attr]
        base: ast.expr = node.value
        while isinstance(base, ast.Attribute):
            parts.insert(0, base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id == "trt":
            chains.add(".".join(parts))
            continue
        # `config.get_timing_cache().serialize`: the attribute of a call on a TensorRT object.
        root = base.func if isinstance(base, ast.Call) else base
        while isinstance(root, ast.Attribute | ast.Call):
            root = root.func if isinstance(root, ast.Call) else root.value
            if isinstance(root, ast.Attribute) and root.attr in TRT_ATTRIBUTES:
                members.add(parts[-1])
                break
        if isinstance(root, ast.Name) and root.id in TRT_OBJECTS:
            members.add(parts[-1])
        elif parts[0] in TRT_ATTRIBUTES and isinstance(base, ast.Name) and base.id == "self":
            members.update(parts[1:])
    return chains, members


def test_fixtures_tell_the_versions_apart() -> None:
    # The lists are the real bindings: 11.x lacks the FP16 builder API that 10.x has.
    ten, eleven = binding_names("10.16.1.11"), binding_names("11.4.0.106")
    assert missing(REMOVED_IN_11, ten) == []
    assert missing(REMOVED_IN_11, eleven) == sorted(REMOVED_IN_11)
    assert len(ten) > 2000 and len(eleven) > 2000


@pytest.mark.parametrize("version", VERSIONS)
def test_every_listed_name_is_in_the_bindings(version: str) -> None:
    assert missing(TENSORRT_API, binding_names(version)) == []


def test_the_code_uses_only_listed_names() -> None:
    source = (ROOT / "engines" / "tensorrt.py").read_text()
    chains, members = used_names(source)
    listed_members = {entry.rsplit(".", 1)[-1] for entry in TENSORRT_API}
    assert chains and members  # the walk found the module's TensorRT calls
    assert "STRONGLY_TYPED" in " ".join(chains) and "execute_async_v3" in members
    # `trt.BuilderFlag` is walked on its way to `trt.BuilderFlag.TF32`: prefixes count.
    prefixes = {e.rsplit(".", i)[0] for e in TENSORRT_API for i in range(e.count(".") + 1)}
    assert sorted(chains - prefixes) == []
    assert sorted(members - listed_members) == []


def test_the_old_fp16_build_would_fail_here() -> None:
    old = """
def build(trt, builder, config, network):
    network = builder.create_network(0)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    layer = network.get_layer(0)
    layer.set_output_type(0, trt.float32)
"""
    chains, members = used_names(old)
    assert {"BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"} <= chains - TENSORRT_API
    assert "get_layer" in members - {e.rsplit(".", 1)[-1] for e in TENSORRT_API}
    eleven = binding_names("11.4.0.106")
    assert missing(chains, eleven) == ["BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"]


@pytest.mark.tensorrt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt not installed")
def test_every_listed_name_resolves_on_the_installed_tensorrt() -> None:
    try:
        import tensorrt as trt
    except ImportError as exc:  # the bindings without their libraries (libnvinfer)
        pytest.skip(f"tensorrt does not import here: {exc}")
    unresolved = []
    for entry in sorted(TENSORRT_API):
        target: object = trt
        for part in entry.split("."):
            if not hasattr(target, part):
                unresolved.append(entry)
                break
            target = getattr(target, part)
    assert unresolved == [], f"TensorRT {trt.__version__}"
