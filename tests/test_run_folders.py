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


def test_train_log_holds_what_the_run_printed_and_why_it_failed(tmp_path):
    base = [sys.executable, "-m", "phase1.train", "model=tiny", "data.patch_size=64", "data.batch_size=2",
            "data.repeats=1", "loop.max_steps=2", "loop.eval_every=2", "eval.max_images=1", "logger=none"]  # fmt: skip
    done = subprocess.run([*base, f"hydra.run.dir={tmp_path / 'ok'}"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "ok" / "train.log").read_text()
    # the closing lines the terminal showed: the final numbers by split and where the run is
    assert "finished at step 2 (0 skipped)" in log and f"folder      {tmp_path / 'ok'}" in log
    val = next(line for line in log.splitlines() if line.startswith("  val "))
    assert "loss " in val and "psnr " in val and "bpp_real " in val
    assert "it/s" not in log and "\r" not in log  # the progress bar's redraws stay on the terminal
    # a problem found inside train(), after Hydra made the folder: the folder says why it holds no checkpoint
    missing = tmp_path / "no_such_photos"
    failed = subprocess.run(
        [*base, "data=folder", f"data.root={missing}", f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 2
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(missing) in error
    assert (tmp_path / "bad" / "train.log").read_text().strip().splitlines()[-1] == error
