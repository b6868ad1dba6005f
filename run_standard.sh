#!/usr/bin/env bash
# Phase 1 training with plain Adam (the baseline). Extra Hydra overrides pass through:
#   ./run_standard.sh model=hpcm_base lmbda=0.0483
set -euo pipefail
cd "$(dirname "$0")"
make -s install
exec .venv/bin/python -m phase1.train optim=adam "$@"
