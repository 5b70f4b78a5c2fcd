"""Extract the identifier strings of a ``tensorrt-cu12-bindings`` wheel's compiled module: the
names its Python bindings define (classes, methods, properties, enum members), one a line.

    pip download tensorrt-cu12-bindings==11.4.0.106 --no-deps -d /tmp/trt
    python tools/tensorrt_names.py /tmp/trt/tensorrt_cu12_bindings-11.4.0.106-*.whl \
        tests/data/tensorrt_names/11.4.0.106.txt

The wheel installs without GPU libraries but does not import without them, so the names are
read from the shared library's strings (pybind11 keeps every bound name as a C string).
``tests/test_tensorrt_api.py`` checks ``engines.tensorrt.TENSORRT_API`` against these lists.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

TRAILING_IDENTIFIER = re.compile(rb"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]{1,63}$")


def binding_names(wheel: Path) -> list[str]:
    """Sorted identifiers that end a C string (not C++ mangled) of the wheel's ``tensorrt*.so``
    modules. The linker stores a string that is the tail of another only once (``float16``
    inside ``bfloat16``, ``bool`` at the end of a longer string), so a bound name is either
    one of these or the tail of one: ``present`` in ``tests/test_tensorrt_api.py``."""
    names: set[str] = set()
    with zipfile.ZipFile(wheel) as archive:
        modules = [n for n in archive.namelist() if re.search(r"/tensorrt[^/]*\.so$", n)]
        if not modules:
            raise ValueError(f"{wheel} holds no tensorrt*.so module")
        for module in modules:
            for chunk in archive.read(module).split(b"\0"):
                found = TRAILING_IDENTIFIER.search(chunk)
                if found and not found.group().startswith(b"_Z"):
                    names.add(found.group().decode())
    return sorted(names)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tensorrt_names.py WHEEL OUT.txt", file=sys.stderr)
        return 2
    names = binding_names(Path(argv[0]))
    Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(argv[1]).write_text("\n".join(names) + "\n")
    print(f"{len(names)} names -> {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
