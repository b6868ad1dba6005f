# The one interface for people and CI. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# The sentinel is rewritten whenever pyproject.toml changes, so a second `make test` does not reinstall.
STAMP      := $(VENV)/.installed
# pytest-xdist workers for `make test`; CI machines have 2 cores.
TEST_WORKERS ?= auto
# Sweep settings: `make sweep-balanced SIZE=full GPUS=0,1 WORKERS_PER_GPU=2 STORAGE=postgresql://...`
# (WORKERS unset: one worker per visible GPU times WORKERS_PER_GPU, or one on a CPU machine)
SIZE       ?= demo
WORKERS    ?=
GPUS       ?=
WORKERS_PER_GPU ?=
STORAGE    ?=
SAMPLER    ?=
STUDY      ?=
EXPERIMENT ?=
# Extra Hydra overrides for train/sweep targets, e.g. `make train-phase2 ARGS="model=small"`.
ARGS       ?=
HOST       ?= 127.0.0.1
PORT       ?= 5000
# `make optuna-dashboard` listens on 8080 unless PORT is given (command line or environment): 5000 is MLflow's.
DASHBOARD_PORT := $(if $(filter file,$(origin PORT)),8080,$(PORT))

.PHONY: help install test test-deps test-fast lint format clean demo mlflow-ui train-phase1 train-phase2 \
        sweep-balanced optuna-dashboard report data-kodak browser postgres slurm mlflow-server bench-optim bench-bk-core bench-hpcm bench-hebbian bench-gate-scan bench-tracking \
        bench-phase1-rd bench-phase1-mps bench-phase2-lm bench-demo demo-weights

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

# The MLflow UI and optuna-dashboard tests drive Debian's Chromium: installed here when we may (CI runs as root on
# Debian).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium is not installed; the MLflow UI and optuna-dashboard browser tests will be skipped"

# The PostgreSQL tests start a real server from Debian's package; installed here when missing (as root).
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "note: PostgreSQL is not installed; its tests will fail under CI"

# The SLURM tests start a one-node cluster (slurmctld, slurmd, munged) from Debian's packages (as root).
slurm:
	@command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || \
	  echo "note: SLURM is not installed; its tests will fail under CI"

test-deps: browser postgres slurm ## Install what the UI, PostgreSQL and SLURM tests drive (as root, Debian)

test: $(STAMP) ## Run the CPU test suite (installs first if needed; `make test-deps` for the browser and database tests)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -q

test-fast: $(STAMP) ## Run the CPU tests not marked slow
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -q -m "not slow"

train-phase1: $(STAMP) ## Phase 1 codec training (ARGS="optim=balanced lmbda=0.0035 ...")
	$(PY) -m phase1.train $(ARGS)

train-phase2: $(STAMP) ## Phase 2 language-model training on the built-in corpus (ARGS="model=small ...")
	$(PY) -m phase2.train $(ARGS)

sweep-balanced: $(STAMP) ## Optuna grid over Balanced's gamma x w_lr (SIZE=demo|full WORKERS=N GPUS=0,1 STORAGE=url)
	$(PY) -m sweeps.run balanced --size $(SIZE) $(if $(WORKERS),--workers $(WORKERS)) $(if $(GPUS),--gpus $(GPUS)) \
	  $(if $(WORKERS_PER_GPU),--workers-per-gpu $(WORKERS_PER_GPU)) $(if $(STORAGE),--storage $(STORAGE)) \
	  $(if $(SAMPLER),--sampler $(SAMPLER))

optuna-dashboard: $(STAMP) ## Watch the sweep's study in optuna-dashboard (STORAGE=url, HOST=127.0.0.1 PORT=8080)
	$(PY) -m sweeps.dashboard $(if $(STORAGE),--storage "$(STORAGE)") --host $(HOST) --port $(DASHBOARD_PORT)

report: $(STAMP) ## Build reports/out/<name>/index.{md,html} from the MLflow runs (STUDY=, EXPERIMENT=)
	$(PY) -m reports.build $(if $(STUDY),--study $(STUDY)) $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

data-kodak: ## Download the Kodak test set (24 PNGs) into data/kodak (needs a network)
	@mkdir -p data/kodak
	@for i in $$(seq -w 1 24); do \
	  test -s data/kodak/kodim$$i.png || curl -fsSL -o data/kodak/kodim$$i.png \
	    https://r0k.us/graphics/kodak/kodak/kodim$$i.png || exit 1; done
	@echo "Kodak in data/kodak: evaluate with python -m phase1.evaluate CKPT --data data/kodak"

lint: $(STAMP) ## Ruff lint and format check of the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Ruff auto-format
	$(VENV)/bin/ruff format .

mlflow-ui: $(STAMP) ## Serve the MLflow store (HOST=127.0.0.1 PORT=5000)
	@echo "training runs: http://$(HOST):$(PORT)/#/experiments?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  --default-artifact-root "$(CURDIR)/mlartifacts" --host $(HOST) --port $(PORT)

# A tracking server for a team: PostgreSQL backend store, artifacts served from a local folder. BACKEND= a
# postgresql:// URL of an existing database; unset, a local cluster in .pgdata/ is started on PG_PORT.
BACKEND ?=
PG_PORT ?= 5433
mlflow-server: $(STAMP) ## MLflow server on PostgreSQL (BACKEND=postgresql://..., HOST=, PORT=; artifacts in mlartifacts/)
	@backend="$(BACKEND)"; [ -n "$$backend" ] || backend=$$($(PY) -m common.postgres start --dir .pgdata \
	  --port $(PG_PORT) --database mlflow) || exit 1; echo "backend store: $$backend"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec $(VENV)/bin/mlflow server --backend-store-uri "$$backend" \
	  --artifacts-destination "$(CURDIR)/mlartifacts" --serve-artifacts --host $(HOST) --port $(PORT)

bench-demo: $(STAMP) ## make install and make demo timed on a fresh clone of HEAD, with what the demo found (~9 min on 2 cores)
	$(PY) benchmarks/bench_demo.py --out benchmarks/results/demo.json

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

bench-gate-scan: $(STAMP) ## The memory's gate-scan kernel: variants, time per gate interval, error (GPU)
	$(PY) benchmarks/bench_gate_scan.py --out benchmarks/results/gate_scan.json

# Resumable: runs live in outputs/rd_base; run the target again after an interruption to continue them.
bench-phase1-rd: $(STAMP) ## Phase 1 experiment: HPCM_Base Adam vs Balanced from scratch, 2,000 steps, R-D curves, BD-rate (GPU, ~25 min on one H200)
	$(PY) benchmarks/bench_phase1_rd.py --experiment rd_study --parallel 10 --work outputs/rd_base_2000 \
	  $(if $(shell command -v nvidia-cuda-mps-control),--mps) --out benchmarks/results/phase1_rd_base_2000.json -- logger=none

bench-phase1-mps: $(STAMP) ## Steps of 10 parallel HPCM_Base runs in 120 s, time-sliced vs CUDA MPS (GPU, ~6 min)
	$(PY) benchmarks/bench_phase1_mps.py --seconds 120 --out benchmarks/results/phase1_parallel_mps.json

bench-phase2-lm: $(STAMP) ## Phase 2 small vs a same-size Transformer: bits/byte, tokens/s, memory (GPU)
	$(PY) benchmarks/bench_phase2_lm.py --out benchmarks/results/phase2_lm.json

# `make demo-weights`: the demo's starting points, trained by the project (experiment=demo_weights of each phase)
# and released into weights/ with a manifest. Interrupted, it resumes; run again after a finished one, it only
# releases again.
DEMO_RUNS ?= outputs/demo_weights
demo-weights: $(STAMP) ## Train the demo's starting weights and release them into weights/ (2 CPU cores: about 2 h 15 min)
	$(PY) -m phase1.train experiment=demo_weights hydra.run.dir=$(DEMO_RUNS)/phase1 logger.run_name=demo-weights-phase1 \
	  $(if $(wildcard $(DEMO_RUNS)/phase1/checkpoints/last.pt),resume=$(DEMO_RUNS)/phase1)
	$(PY) -m phase2.train experiment=demo_weights hydra.run.dir=$(DEMO_RUNS)/phase2 logger.run_name=demo-weights-phase2 \
	  $(if $(wildcard $(DEMO_RUNS)/phase2/checkpoints/last.pt),resume=$(DEMO_RUNS)/phase2)
	$(PY) -m common.release weights $(DEMO_RUNS)/phase1 $(DEMO_RUNS)/phase2

# `make demo`: the whole pipeline at demo size on the built-in data, from the released weights (weights/); sizes and
# lambdas live in experiments/phase{1,2}/experiment/demo.yaml, which the Balanced study's demo size starts from too.
DEMO_PROMPT ?= The history of
demo: $(STAMP) ## The main job: released weights fine-tuned (Phase 1 Adam vs Balanced, Phase 2), a short sweep, the report
	$(PY) -m common.release weights --check
	@echo "== Phase 1: the released tiny codec fine-tuned with Adam and with Balanced at four lambdas, two at a time"
	$(PY) -m phase1.train -m experiment=demo
	@echo "== Phase 2: the released language model on the test split, a paragraph, its diagnostics, a short fine-tune"
	$(PY) -m phase2.evaluate weights/phase2_debug_bytes.pt builtin --split test --batch-size 64
	$(PY) -m phase2.generate weights/phase2_debug_bytes.pt --prompt "$(DEMO_PROMPT)" --max-new-tokens 240 \
	  --temperature 0.8 --top-k 40
	$(PY) -m phase2.diagnostics weights/phase2_debug_bytes.pt --out outputs/demo/diagnostics
	$(PY) -m phase2.train experiment=demo
	@echo "== Balanced sweep: four more trials of its gamma x w_lr grid (demo size, two workers)"
	$(PY) -m sweeps.run balanced --size demo --trials 4 --workers 2
	@echo "== Report"
	$(PY) -m reports.build
	@echo "Open the report: reports/out/all/index.html    Browse every run: make mlflow-ui"

clean: ## Remove caches (keeps .venv, the MLflow store and checkpoints)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
