# The one interface for people and CI. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# The sentinel is rewritten whenever pyproject.toml changes, so a second `make test` does not reinstall.
STAMP      := $(VENV)/.installed
# pytest-xdist workers; CI machines have 2 cores.
WORKERS    ?= auto
# Extra Hydra overrides for train/sweep targets, e.g. `make train-phase2 ARGS="model=small"`.
ARGS       ?=
HOST       ?= 127.0.0.1
PORT       ?= 5000

.PHONY: help install test test-fast lint format clean demo mlflow-ui \
        bench-optim bench-bk-core bench-hpcm bench-hebbian bench-tracking

help: ## List every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the pair that is known to import together with compressai (see README).
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install the project with its dev tools

test: $(STAMP) ## Run the CPU test suite (installs first if needed)
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -q

test-fast: $(STAMP) ## Run the CPU tests not marked slow
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -q -m "not slow"

lint: $(STAMP) ## Ruff lint of the whole tree
	$(VENV)/bin/ruff check .

format: $(STAMP) ## Ruff auto-format
	$(VENV)/bin/ruff format .

mlflow-ui: $(STAMP) ## Serve the project's MLflow store on $(HOST):$(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  --default-artifact-root "$(CURDIR)/mlartifacts" --host $(HOST) --port $(PORT)

bench-tracking: $(STAMP) ## Cost of MLflow logging relative to a training step (CPU)
	$(PY) benchmarks/bench_tracking.py --out benchmarks/results/tracking.json

bench-optim: $(STAMP) ## Balanced vs Adam vs CautiousAdam step time (run on the GPU machine for the real numbers)
	$(PY) benchmarks/bench_optim.py --out benchmarks/results/optim.json

bench-bk-core: $(STAMP) ## BK-Core Triton kernel vs reference and HBM roofline (GPU)
	$(PY) benchmarks/bench_bk_core.py --out benchmarks/results/bk_core.json

bench-hpcm: $(STAMP) ## HPCM encode/decode time (GPU)
	$(PY) benchmarks/bench_hpcm.py --out benchmarks/results/hpcm.json

bench-hebbian: $(STAMP) ## Hebbian memory layer vs chunked GLA and SDPA (GPU)
	$(PY) benchmarks/bench_hebbian.py --out benchmarks/results/hebbian.json

clean: ## Remove caches (keeps .venv, the MLflow store and checkpoints)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
