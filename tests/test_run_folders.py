"""Runs started together (a sweep's workers, a job array) each get a folder of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common import REPO_ROOT
from common.config import compose, run_dir


def test_runs_started_in_the_same_second_have_their_own_folders(tmp_path):
    args = ["debug=fast_dev_run", "model=debug", "seq_len=32", "batch_size=2", "eval.max_batches=1",
            f"paths.output_root={tmp_path}"]  # fmt: skip
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "phase2.train", *args, f"seed={i}"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()[-2000:]
    folders = sorted(p for p in (tmp_path / "phase2").iterdir() if p.is_dir())
    assert len(folders) == 3, folders
    seeds = set()
    for folder in folders:
        assert (folder / "checkpoints" / "last.pt").is_file(), folder
        config = (folder / ".hydra" / "config.yaml").read_text()
        seeds |= {line for line in config.splitlines() if line.startswith("seed:")}
    assert seeds == {"seed: 0", "seed: 1", "seed: 2"}  # each folder holds its own run's config


@pytest.mark.parametrize("count", [20])
def test_run_dir_outside_hydra_never_hands_out_a_folder_twice(tmp_path, count):
    cfg = compose("phase1", [f"paths.output_root={tmp_path}", "logger=none"])
    assert len({run_dir(cfg) for _ in range(count)}) == count
