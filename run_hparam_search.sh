#!/usr/bin/env bash
# The Balanced optimizer's hyper-parameter search (the original code's 12-point grid gamma x w_lr), as
# `make sweep-balanced`. Arguments pass through to `python -m sweeps.run`:
#   ./run_hparam_search.sh --size full --workers 4
set -euo pipefail
cd "$(dirname "$0")"
make -s install
exec .venv/bin/python -m sweeps.run balanced "$@"
