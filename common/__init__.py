"""Shared by both phases: the run, the loop, checkpoints, tracking, optimizers, schedulers."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs, the default stores and run folders
