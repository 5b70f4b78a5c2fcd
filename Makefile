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

.PHONY: setup apt test demo lint format bench ge2e-reference clean gpu-pack gpu-run

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

# --- the GPU run (README "GPU run"; scripts/gpu_run.py) ---------------------------------
# gpu-pack, here: the files the GPU machine gets besides the checkout (carry out/gpu_pack,
# <= 64 MiB): the dataset of the shipped lite weights (docs/MODEL_CARD_lite.md) cut to
# GPU_PACK_MIB, and a clip for `process`. Without that dataset, one is prepared from
# ../shared/data first (the model card's folders except the fmd photos; about 8 minutes).
SHARED_DATA ?= ../shared/data
GPU_SOURCE_DATASET ?= /tmp/av14/dataset
GPU_CLIP ?= $(SHARED_DATA)/talking_heads/more/tv/kim_7s_raw.mp4
GPU_PACK_MIB ?= 44
GPU_OUT ?= out/gpu_run

gpu-pack: setup
	[ -f $(GPU_SOURCE_DATASET)/manifest.jsonl ] || $(BIN)/python -m training prepare \
	  --videos $(SHARED_DATA)/talking_heads/pcavs $(SHARED_DATA)/talking_heads/grid \
	    $(SHARED_DATA)/talking_heads/more \
	  --images $(SHARED_DATA)/faces/lfw $(SHARED_DATA)/faces/face_research_lab \
	  --speech $(SHARED_DATA)/speech/librispeech $(SHARED_DATA)/speech/hdtf_radio \
	  --identity-regex '(?P<id>lfw/.+)_[0-9]{4}\.jpg$$' \
	  --identity-regex '(?P<id>face_research_lab/(?:london|canada)/[0-9]+[a-z]?)[._]' \
	  --identity-regex 'cremad_(?P<id>[0-9]{4})_' \
	  --identity-regex 'hdtf_radio/(?P<id>RD_Radio[0-9]+)_' \
	  --identity-alias id2_vcd_swwp2s=sbia1a --frame-step 3 -o $(GPU_SOURCE_DATASET)
	rm -rf out/gpu_pack
	mkdir -p out/gpu_pack
	$(BIN)/python -m training pack $(GPU_SOURCE_DATASET) -o out/gpu_pack/dataset \
	  --max-mib $(GPU_PACK_MIB)
	cp $(GPU_CLIP) out/gpu_pack/clip.mp4
	du -sh out/gpu_pack

# gpu-run, on the GPU machine: no setup (its Python has torch; nothing is installed).
gpu-run:
	bash scripts/gpu_run.sh $(GPU_OUT)

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
