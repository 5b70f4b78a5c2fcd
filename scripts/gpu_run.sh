#!/usr/bin/env bash
# One GPU run in one command: scripts/gpu_run.sh OUT_DIR (see scripts/gpu_run.py).
# The GPU machine may not have the project's venv: use the first Python that imports torch
# ($AVSTREAM_PYTHON, .venv/bin/python, python3, python); the checkout goes on PYTHONPATH, so
# nothing is installed and no network is needed.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
python=""
for candidate in ${AVSTREAM_PYTHON:-} .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "gpu_run: no Python here imports torch (set AVSTREAM_PYTHON)" >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_run: $python ($("$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
exec "$python" scripts/gpu_run.py "$1"
