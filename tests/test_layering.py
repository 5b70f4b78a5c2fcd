"""The packages form layers: ``avinpaint`` (the network) <- ``engines`` (runtimes) <- ``stream``
(the video system); ``training`` sits beside ``stream`` and may use both lower layers. A layer
never imports one above it, so that ``engines`` serves any caller and ``avinpaint`` loads
anywhere. Every import statement counts, wherever it is: module level, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module`` with a literal name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("avinpaint", "engines", "stream", "training")

FORBIDDEN: dict[str, frozenset[str]] = {
    "avinpaint": frozenset({"stream", "engines", "training"}),
    "engines": frozenset({"stream", "training"}),
    "stream": frozenset({"training"}),
    "training": frozenset(),
}
"""Package -> the packages its modules must not import."""

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        # `avstream train ...` / `avstream eval ...` hand their arguments to the training CLI:
        # the one place the video layer reaches into training, imported only when run.
        ("stream.cli", "training.__main__"),
    }
)
"""(importing module, imported module) pairs exempt from ``FORBIDDEN``."""


@dataclass(frozen=True)
class Import:
    """One imported module name, where it was imported from and on which line."""

    module: str
    target: str
    line: int


def module_name(path: Path, root: Path) -> str:
    """``stream/cli.py`` -> ``stream.cli``; ``engines/__init__.py`` -> ``engines``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every module ``source`` (the text of ``module``) imports, relative imports resolved."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(module, base, node.lineno))
            # `from stream import cli` imports stream.cli: check the submodule too (for a
            # plain name, `from stream.errors import UsageError`, the extra entry is harmless).
            found += [Import(module, f"{base}.{a.name}", node.lineno) for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(module, node.args[0].value, node.lineno))
    return found


def violations(imports: list[Import]) -> list[str]:
    """The imports that cross a layer upwards and are not in ``ALLOWED``, one line each."""
    bad: list[str] = []
    reported: set[tuple[str, int]] = set()
    for imp in imports:
        source_package = imp.module.split(".")[0]
        target_package = imp.target.split(".")[0]
        if target_package not in FORBIDDEN.get(source_package, frozenset()):
            continue
        if any(
            imp.module == module and (imp.target + ".").startswith(target + ".")
            for module, target in ALLOWED
        ):
            continue
        if (imp.module, imp.line) not in reported:  # one line per statement
            reported.add((imp.module, imp.line))
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return bad


def package_imports() -> list[Import]:
    """The imports of every module file of every package in ``PACKAGES``."""
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path, ROOT)
            found += imports_of(path.read_text(), name, path.name == "__init__.py")
    return found


def test_no_package_imports_a_layer_above_it() -> None:
    assert violations(package_imports()) == []


def test_every_allowed_import_still_exists() -> None:
    # A stale exemption would silently allow a future import of the same name.
    pairs = {(imp.module, imp.target) for imp in package_imports()}
    assert pairs >= ALLOWED, sorted(ALLOWED - pairs)


def test_every_package_has_modules() -> None:
    # Guards against walking an empty or misnamed folder and passing vacuously.
    modules = {imp.module.split(".")[0] for imp in package_imports()}
    assert modules == set(PACKAGES)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "engines.cli",
            "from stream.errors import UsageError",
            "engines.cli:1 imports stream.errors",
        ),
        ("engines.x", "def f():\n    import training.data", "engines.x:2 imports training.data"),
        (
            "avinpaint.model",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engines import cache",
            "avinpaint.model:3 imports engines",
        ),
        ("avinpaint.a", "import importlib\nimportlib.import_module('stream.cli')", None),
        ("stream.pipeline", "from training.__main__ import main", None),
        ("stream.sub.mod", "from ...training import data", None),
    ],
)
def test_violations_are_found(module: str, source: str, expected: str | None) -> None:
    found = violations(imports_of(source, module))
    assert found, f"{source!r} in {module} should be a violation"
    if expected is not None:
        assert found[0] == expected


def test_allowed_and_downward_imports_pass() -> None:
    source = "from training.__main__ import main\nfrom engines.backends import Backend\n"
    assert violations(imports_of(source, "stream.cli")) == []
    assert violations(imports_of("from . import config", "avinpaint.model")) == []
    assert violations(imports_of("from .cache import EngineCache", "engines", True)) == []
    assert violations(imports_of("import avinpaint.model", "training.trainer")) == []
