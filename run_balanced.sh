#!/usr/bin/env bash
# Phase 1 training with the Balanced R-D optimizer (Cautious Adam + FAMO), the original code's defaults:
# lambda 0.013, gamma 0.003, w_lr 0.025, clip 1.0. Extra Hydra overrides pass through:
#   ./run_balanced.sh model=hpcm_base data=folder data.root=/data/images lmbda=0.0035 loop.max_steps=200000
set -euo pipefail
cd "$(dirname "$0")"
make -s install
exec .venv/bin/python -m phase1.train optim=balanced "$@"
