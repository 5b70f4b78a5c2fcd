# One command sets up (idempotent) and runs each job; see README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# espeak-ng: speech for generated test clips. GStreamer + introspection: live RTSP output
# (PyGObject is built in the venv against these).
APT_PACKAGES := espeak-ng python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
	gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools libgirepository1.0-dev \
	libcairo2-dev pkg-config
TORCH ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Shared cores: one thread per library keeps runs fast and timings comparable.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup apt test demo lint format bench ge2e-reference clean

setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin torch first: an open range would pull a multi-GB CUDA build from PyPI.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,live]"
	# Only the GE2E weights file (pretrained.pt, Apache-2.0) is used from resemblyzer; its
	# own dependencies (librosa, webrtcvad) are not needed and webrtcvad needs a compiler.
	$(BIN)/python -m pip install -q --no-deps "resemblyzer==0.1.4"
	touch $(STAMP)

# Live tests run in their own process: once GStreamer's libraries are loaded, torch's ONNX
# exporter aborts the process (seen with torch 2.13 + GStreamer 1.22).
test: setup
	$(BIN)/python -m pytest -q -m "not live"
	$(BIN)/python -m pytest -q -m live

demo: setup
	mkdir -p out
	$(BIN)/python -m stream.testclip out/demo_input.mp4
	$(BIN)/avstream process out/demo_input.mp4 -o out/demo_restored.mp4
	@echo "restored video: out/demo_restored.mp4 (input: out/demo_input.mp4; what was made up: out/demo_restored.restored.jsonl)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.process

# Regenerate tests/data/ge2e_reference_synth.* with resemblyzer itself, in a throwaway venv
# (never the project's: resemblyzer needs webrtcvad, which imports pkg_resources).
ge2e-reference:
	python3 -m venv /tmp/rz && /tmp/rz/bin/pip install -q torch==2.13.0 resemblyzer "setuptools<81"
	/tmp/rz/bin/python tools/make_ge2e_reference.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
