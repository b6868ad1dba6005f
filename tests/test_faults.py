"""Surviving faults: SIGKILL of a training run, of a checkpoint write and of a sweep worker; non-finite losses
at several rates. Real processes are killed with SIGKILL (no handler runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from phase2.data import builtin_articles

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


def _lm_command(text: Path, ckpt: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "phase2.train", "model=debug", "data=file", f"data.path={text}", "seq_len=16",
            "batch_size=2", "loop.max_steps=200", "loop.log_every=1", "loop.ckpt_every=40", "loop.eval_every=0",
            "loop.progress=false", "logger=none", "device=cpu", "diagnostics_every=0", f"checkpoint.dir={ckpt}",
            f"hydra.run.dir={run}", *extra]


def _history(run: Path) -> dict[float, float]:
    record = json.loads((run / "training_history.json").read_text())
    return dict(zip(record["steps"], record["train_losses"]))


def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:3]))
    subprocess.run(_lm_command(text, tmp_path / "full", tmp_path / "full_run"), check=True, env=ENV, cwd=ROOT,
                   capture_output=True, timeout=300)
    victim = subprocess.Popen(_lm_command(text, tmp_path / "ckpt", tmp_path / "run1"), env=ENV, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (tmp_path / "ckpt" / "step_00000080.pt").exists(), 240, "the step-80 checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    resumed_from = load_checkpoint(tmp_path / "ckpt" / "last.pt")["global_step"]
    assert 80 <= resumed_from < 200
    subprocess.run(_lm_command(text, tmp_path / "ckpt", tmp_path / "run2", f"resume={tmp_path / 'ckpt' / 'last.pt'}"),
                   check=True, env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    full, resumed = _history(tmp_path / "full_run"), _history(tmp_path / "run2")
    after = [s for s in full if s > resumed_from]
    assert len(after) == 200 - resumed_from
    assert [resumed[s] for s in after] == pytest.approx([full[s] for s in after], abs=1e-6)


WRITER = """
import sys, torch
from common.checkpoint import save_checkpoint
path, i = sys.argv[1], 0
while True:  # ever newer versions of a ~64 MB checkpoint, as fast as the disk takes them
    i += 1
    save_checkpoint(path, {"kind": "phase2", "model_state_dict": {"w": torch.full((16_000_000,), float(i))}, "i": i})
    print(i, flush=True)
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    written = int(writer.stdout.readline())  # one complete version exists; the next one is being written
    time.sleep(0.3)
    temporaries = list(tmp_path.glob(".last.pt.*.tmp"))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    payload = load_checkpoint(path)
    assert payload["i"] >= written
    assert torch.all(payload["model_state_dict"]["w"] == payload["i"])  # a whole version, not a torn one
    assert temporaries or list(tmp_path.glob(".last.pt.*.tmp")), "the kill should have met a write in progress"
    assert [p.name for p in tmp_path.glob("*.pt")] == ["last.pt"]  # leftovers are hidden temporaries only


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.6])
def test_nonfinite_losses_at_several_rates_are_skipped_and_counted(tmp_path, rate):
    from tests.common.test_loop import _make

    period = round(1 / rate) if rate < 0.5 else 5
    # at 60 %: 3 of every 5 steps, never 3 in a row (the limit that aborts a run is tested in test_loop)
    bad = [s for s in range(1, 201) if (s % period == 0 if rate < 0.5 else s % 5 in (0, 2, 4))]
    loop, _ = _make(tmp_path, max_steps=200, poison_steps=tuple(bad))
    summary = loop.run()
    assert summary["skipped_steps"] == len(bad) and loop.state.global_step == 200
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())


STUDY = """
name: killed
phase: phase1
objective: final/test/loss
overrides: [optim=balanced, model=tiny]
sizes:
  demo: [data.patch_size=64, data.batch_size=2, data.repeats=1, loop.max_steps=30, loop.eval_every=30,
         loop.log_every=1, loop.progress=false, eval.max_images=1, eval.real_bitstreams=false]
search_space:
  optim.gamma: {type: categorical, choices: [0.001, 0.01]}
  optim.w_lr: {type: categorical, choices: [0.01, 0.05]}
sampler: grid
n_trials: 4
"""


def test_sweep_worker_killed_mid_trial_is_retried_by_the_next_run(tmp_path):
    import optuna

    from sweeps.run import open_storage, run_study

    study_file = tmp_path / "killed.yaml"
    study_file.write_text(textwrap.dedent(STUDY))
    storage = f"journal:{tmp_path / 'journal.log'}"
    worker = subprocess.Popen([sys.executable, "-m", "sweeps.run", str(study_file), "--storage", storage, "--logger",
                               "none"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)

    def running() -> bool:
        if not (tmp_path / "journal.log").exists():
            return False
        study = optuna.load_study(study_name="killed", storage=open_storage(storage))
        return any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)

    _wait_for(running, 240, "a running trial")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    summary = run_study(str(study_file), storage=storage, logger="none")
    study = optuna.load_study(study_name="killed", storage=open_storage(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert summary["n_complete"] == 4 and len(done) == 4
    assert {(t.params["optim.gamma"], t.params["optim.w_lr"]) for t in done} == \
        {(0.001, 0.01), (0.001, 0.05), (0.01, 0.01), (0.01, 0.05)}
    assert any(t.state == optuna.trial.TrialState.FAIL for t in study.trials)  # the killed one, recorded


def test_a_locked_mlflow_store_does_not_stall_training_and_nothing_is_lost(tmp_path, mlflow_store):
    import sqlite3
    import threading

    import mlflow

    from common.config import compose
    from phase2.train import train

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:3]))
    released = threading.Event()

    def hold_lock(seconds: float) -> None:  # another process-like writer holding SQLite's write lock
        con = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"), isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()
        released.set()

    stamps = []

    def on_log(step, point):
        stamps.append(time.monotonic())
        if step == 20:
            threading.Thread(target=hold_lock, args=(8.0,), daemon=True).start()

    summary = train(compose("phase2", ["model=debug", "data=file", f"data.path={text}", "seq_len=16", "batch_size=2",
                                       "loop.max_steps=400", "loop.log_every=5", "loop.eval_every=0",
                                       "loop.progress=false", "device=cpu", "diagnostics_every=0",
                                       f"checkpoint.dir={tmp_path / 'ckpt'}", f"paths.output_root={tmp_path}",
                                       "logger.run_name=locked"]), on_log=on_log)
    assert summary["global_step"] == 400
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 4.0  # no step waited for the 8 s lock
    released.wait(30)
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=["phase2"]).iloc[0]
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(5, 401, 5))  # written later, none lost
