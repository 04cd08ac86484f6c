# mer-pipe: every target sets itself up (apt packages, .venv, editable install), skipping what is done.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= meld
ROOT ?=
PRESET ?= offline
MODEL ?= ar-iigcn
WORKERS ?=
ONLY ?=
MODALITIES ?=
SEEDS ?=
APT_PACKAGES := ffmpeg espeak-ng

.PHONY: setup demo test test-all features train bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@missing=""; for p in ffmpeg espeak-ng; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; fi
	@[ -x $(BIN)/python ] || python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

## The main job on the embedded default, offline: synth corpus -> prepare -> features -> train -> metrics.
demo: setup
	$(BIN)/mer-pipe demo --out demo

## The test suite (offline, CPU, a few minutes). Heavier tests: make test-all.
test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/pytest -q

test-all: setup
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/pytest -q -m ""

## make features DATASET=meld ROOT=/data/MELD.Raw [PRESET=paper] [ONLY=t,a] [WORKERS=2]
## (slots whose modality the corpus has no files for are skipped: ROOT=<folder of the MELD CSVs> gives text only)
features: setup
	@if [ -n "$(ROOT)" ]; then $(BIN)/mer-pipe prepare $(DATASET) --root "$(ROOT)"; fi
	$(BIN)/mer-pipe features --dataset $(DATASET) --preset $(PRESET) $(if $(ONLY),--only $(ONLY)) $(if $(WORKERS),--workers $(WORKERS))

## make train DATASET=meld MODEL=ar-iigcn [MODALITIES=t] [SEEDS=0,1,2]  (default modalities: every slot with features)
train: setup
	$(BIN)/mer-pipe train --model $(MODEL) --dataset $(DATASET) $(if $(MODALITIES),--modalities $(MODALITIES)) $(if $(SEEDS),--seeds $(SEEDS))

bench: setup
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_meld_text.py
	$(BIN)/python bench/bench_first_output.py
	$(BIN)/python bench/bench_defaults.py
