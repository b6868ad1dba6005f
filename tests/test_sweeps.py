"""Optuna studies run through sweeps/, every trial an MLflow run nested under the study's parent run."""

from __future__ import annotations

import re
import textwrap

import pytest

from sweeps.run import open_study, run_study
from sweeps.study import load_study

pytestmark = pytest.mark.slow

TINY = """
name: {name}
phase: phase1
objective: final/val/loss
overrides: [optim=balanced, model=tiny]
sizes:
  demo: [data.patch_size=64, data.batch_size=2, data.repeats=1, loop.max_steps=2, loop.eval_every=2,
         loop.log_every=1, loop.progress=false, eval.max_images=1, eval.real_bitstreams=false]
search_space:
  optim.gamma: {{type: categorical, choices: {gammas}}}
  optim.w_lr: {{type: categorical, choices: [0.01, 0.05]}}
sampler: grid
n_trials: {n}
"""


def _study_file(tmp_path, name="tiny", gammas="[0.001, 0.01]", n=4):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(TINY.format(name=name, gammas=gammas, n=n)))
    return str(path)


def _trial_runs(uri, study):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["phase1"], filter_string=f"tags.optuna_study = '{study}'")


def test_four_trials_four_nested_runs(tmp_path, mlflow_store):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    summary = run_study(_study_file(tmp_path), storage=storage)
    assert summary["n_complete"] == 4 and summary["n_fail"] == 0
    runs = _trial_runs(mlflow_store, "tiny")
    parent = runs[runs["tags.kind"] == "study"]
    trials = runs[runs["tags.kind"] != "study"]
    assert len(parent) == 1 and len(trials) == 4
    assert set(trials["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    assert set(trials["tags.optuna_state"]) == {"COMPLETE"}
    assert {(float(g), float(w)) for g, w in zip(trials["params.optim.gamma"], trials["params.optim.w_lr"])} == {
        (0.001, 0.01),
        (0.001, 0.05),
        (0.01, 0.01),
        (0.01, 0.05),
    }
    best = min(trials["metrics.val/loss"])
    assert parent.iloc[0]["metrics.study/best_value"] == pytest.approx(best)


def test_failing_trial_does_not_stop_the_study(tmp_path, mlflow_store):
    # gamma = "broken" cannot be a float: that trial fails inside train(), the others complete
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    summary = run_study(_study_file(tmp_path, name="failing", gammas="[0.001, broken]"), storage=storage, logger="none")
    assert summary["n_fail"] == 2 and summary["n_complete"] == 2


def test_interrupted_study_continues(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _study_file(tmp_path, name="resumable", n=2)
    assert run_study(first, storage=storage, logger="none")["n_complete"] == 2
    # a worker that died mid-trial leaves a RUNNING trial behind
    study = open_study(load_study(first), storage)
    dead = study.ask()
    dead.suggest_categorical("optim.gamma", [0.001, 0.01])
    dead.suggest_categorical("optim.w_lr", [0.01, 0.05])
    summary = run_study(_study_file(tmp_path, name="resumable", n=4), storage=storage, logger="none")
    assert summary["n_complete"] == 4 and summary["n_running"] == 0
    assert summary["n_fail"] == 1  # the dead one, re-run as a queued trial
    params = [t.params for t in open_study(load_study(first), storage).trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(p.items())) for p in params}) == 4  # no finished grid point was repeated


def test_two_workers_share_one_study(tmp_path):
    summary = run_study(
        _study_file(tmp_path, name="parallel"), workers=2, storage=f"journal:{tmp_path / 'journal.log'}", logger="none"
    )
    assert summary["n_complete"] == 4 and summary["n_fail"] == 0


def test_bad_study_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="known studies"):
        load_study("no_such_study")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nphase: phase3\nobjective: y\n")
    with pytest.raises(ValueError, match="phase='phase3'"):
        load_study(bad)
    with pytest.raises(ValueError, match="size='huge'"):
        run_study(_study_file(tmp_path), size="huge", logger="none")


def test_builtin_studies_load():
    spec = load_study("balanced")
    assert spec.n_trials == 12 and len(spec.grid()["optim.gamma"]) * len(spec.grid()["optim.w_lr"]) == 12


def test_sigterm_stops_the_sweep_and_a_rerun_finishes_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from common import REPO_ROOT

    study_file = _study_file(tmp_path, name="stoppable", n=4)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # a longer trial, so the signal lands inside one
    args = [sys.executable, "-m", "sweeps.run", study_file, "--storage", storage, "--logger", "none"]
    spec_text = open(study_file).read().replace("loop.max_steps=2", "loop.max_steps=400")
    open(study_file, "w").write(spec_text)
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(1)
        study = open_study(load_study(study_file), storage)
        if any(t.state.name == "RUNNING" for t in study.trials):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    states = [t.state.name for t in open_study(load_study(study_file), storage).trials]
    assert states.count("FAIL") == 1 and states.count("WAITING") == 1, (states, out[-2000:])
    assert "COMPLETE" not in states  # the sweep stopped: no further trial started
    open(study_file, "w").write(spec_text.replace("loop.max_steps=400", "loop.max_steps=2"))
    summary = run_study(study_file, storage=storage, logger="none")
    assert summary["n_complete"] == 4 and summary["n_running"] == 0


def test_a_dead_workers_trial_ends_failed_in_mlflow_too(tmp_path, mlflow_store):
    """A trial left RUNNING by a killed worker: Optuna marks it failed and queues it again, and its MLflow run
    is ended FAILED instead of staying RUNNING (and counted) forever."""
    from common.tracking import MLflowLogger, Store
    from sweeps.run import fail_tracking_runs, requeue_stale_trials

    spec = load_study(_study_file(tmp_path, name="dead"))
    study = open_study(spec, f"sqlite:///{tmp_path / 'optuna.db'}")
    study.ask()  # trial 0, RUNNING, as a worker leaves it when killed
    run = MLflowLogger("phase1", tags={"optuna_study": "dead", "optuna_trial": 0})
    assert requeue_stale_trials(study) == [0]
    fail_tracking_runs(spec, [0])
    store = Store()
    assert store.client.get_run(run.run_id).info.status == "FAILED"
    assert store.client.get_run(run.run_id).data.tags["optuna_state"] == "FAIL"


@pytest.mark.parametrize("storage", ["sqlite:///{d}/optuna.db", "journal:{d}/journal.log"])
def test_a_second_runner_on_one_local_storage_is_refused(tmp_path, storage, capsys):
    import subprocess
    import sys

    from common import REPO_ROOT
    from sweeps.run import main

    storage = storage.format(d=tmp_path)
    path = storage.removeprefix("journal:").removeprefix("sqlite:///")
    # a live runner: another process holding the storage the way run_study does
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from common.sqlite_lock import sole_user\n"
            f"with sole_user(Path({path!r}), 'busy'):\n    print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main([_study_file(tmp_path, name="shared"), "--storage", storage, "--logger", "none"])
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err.strip()
    assert rc == 2 and error.startswith(f"error: storage {storage} is in use by another sweep")
    assert f"pid {holder.pid}" in error and "\n" not in error
    # the first runner's process is gone (its lock with it): the study runs
    assert run_study(_study_file(tmp_path, name="shared", n=1), storage=storage, logger="none")["n_complete"] == 1


@pytest.mark.parametrize(
    "gpus,workers,per_gpu,expected",
    [
        (["0", "2", "3"], None, 1, ["0", "2", "3"]),  # one worker per GPU
        (["0", "1"], None, 2, ["0", "1", "0", "1"]),  # two small trials packed on each GPU
        (["0", "1"], 3, 1, ["0", "1", "0"]),  # worker i on GPU i mod G
        ([], None, 1, [None]),  # no GPU: one worker on the CPU
        ([], 2, 1, [None, None]),
    ],
)
def test_workers_are_placed_on_gpus_round_robin(gpus, workers, per_gpu, expected):
    from sweeps.run import place_workers

    assert place_workers(gpus, workers, per_gpu) == expected


def test_gpu_lists_and_counts_are_checked(monkeypatch):
    from sweeps.run import parse_gpus, place_workers, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"] == parse_gpus(None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    assert parse_gpus(" 1, 4 ") == ["1", "4"]
    for bad in ("0,0", ",", ""):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)
    with pytest.raises(ValueError, match="--workers 0"):
        place_workers(["0"], 0)
    with pytest.raises(ValueError, match="--workers-per-gpu 0"):
        place_workers(["0"], None, 0)


def test_each_worker_runs_on_its_gpu_and_tags_its_runs(tmp_path, mlflow_store):
    # three fake GPU ids on a CPU machine: each worker process must see only its own in CUDA_VISIBLE_DEVICES
    storage = f"journal:{tmp_path / 'journal.log'}"
    summary = run_study(_study_file(tmp_path, name="placed", n=3), storage=storage, gpus=["0", "2", "3"])
    assert summary["n_complete"] == 3
    trials = open_study(load_study(_study_file(tmp_path, name="placed", n=3)), storage).trials
    assert sorted(t.user_attrs["gpu"] for t in trials) == ["0", "2", "3"]
    runs = _trial_runs(mlflow_store, "placed")
    trial_runs = runs[runs["tags.kind"] != "study"]
    by_trial = {int(n): g for n, g in zip(trial_runs["tags.optuna_trial"], trial_runs["tags.gpu"])}
    assert by_trial == {t.number: t.user_attrs["gpu"] for t in trials}


def test_a_sweep_whose_trials_all_fail_exits_non_zero(tmp_path, capsys):
    from sweeps.run import main

    study = _study_file(tmp_path, name="doomed", gammas="[broken, worse]")
    status = main([study, "--logger", "none", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[-1].startswith("error: all 4 trial(s) of this run failed; the first, trial 0: ")
    assert re.search(r"optim\.gamma='(broken|worse)' must be a number", err[-1])  # the error itself, same line


def test_a_sweep_with_some_failures_exits_0_and_counts_them(tmp_path, capsys):
    from sweeps.run import main

    study = _study_file(tmp_path, name="halfway", gammas="[0.001, broken]")
    status = main([study, "--logger", "none", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    assert status == 0
    assert "2 of 4 trial(s) of this run failed; the first, trial " in capsys.readouterr().out


def test_trials_caps_a_run_and_the_next_run_goes_on_and_each_ends_with_a_readable_summary(tmp_path, capsys):
    from sweeps.run import main

    study, storage = _study_file(tmp_path, name="capped"), f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main([study, "--logger", "none", "--storage", storage, "--trials", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "study 'capped': 4 trials (3 to run now)" in out[0]
    assert out[-2] == "study 'capped': 3 complete, 0 pruned, 0 failed, 0 running"
    assert re.fullmatch(r"  best   final/val/loss \S+ with optim\.gamma=\S+, optim\.w_lr=\S+ \(trial \d\)", out[-1])
    assert main([study, "--logger", "none", "--storage", storage, "--trials", "3"]) == 0
    assert "(1 to run now)" in capsys.readouterr().out  # what the study still needs, not 3 more
    assert len(open_study(load_study(study), storage).trials) == 4


PRUNED = """
name: pruned
phase: phase1
objective: final/val/loss
overrides: [optim=adam, model=tiny]
sizes:
  demo: [data.patch_size=64, data.batch_size=2, data.repeats=1, loop.max_steps=6, loop.eval_every=2,
         loop.log_every=1, loop.progress=false, eval.max_images=1, eval.real_bitstreams=false]
search_space:
  optim.lr: {type: categorical, choices: [0.0001, 0.00011, 0.01]}
sampler: tpe
pruner: median
pruner_warmup_evals: 0
n_trials: 3
"""


def test_the_median_pruner_stops_a_bad_trial_on_val_loss_before_its_last_evaluation(tmp_path, mlflow_store):
    from optuna.trial import TrialState

    path = tmp_path / "pruned.yaml"
    path.write_text(PRUNED)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(load_study(str(path)), storage)
    for lr in (0.0001, 0.00011, 0.01):  # two sane trials set the median, then one whose lr wrecks the codec
        study.enqueue_trial({"optim.lr": lr})
    summary = run_study(str(path), storage=storage)
    assert (summary["n_complete"], summary["n_pruned"]) == (2, 1)
    trials = sorted(open_study(load_study(str(path)), storage).trials, key=lambda t: t.number)
    good, bad = trials[:2], trials[2]
    assert bad.params["optim.lr"] == 0.01 and bad.state == TrialState.PRUNED
    assert all(sorted(t.intermediate_values) == [2, 4, 6] for t in good)  # evaluations at steps 2, 4, 6
    assert sorted(bad.intermediate_values) == [2]  # pruned at its first evaluation, on val/loss
    median = sorted(t.intermediate_values[2] for t in good)[0]  # of two values, Optuna's median is the lower
    assert bad.intermediate_values[2] > median
    runs = _trial_runs(mlflow_store, "pruned")
    state = dict(zip(runs["tags.optuna_trial"], runs["status"]))
    assert state[str(bad.number)] == "KILLED"


@pytest.mark.parametrize("retried_by", ["runner", "heartbeat"])
def test_a_retried_trial_resumes_from_the_checkpoint_of_the_trial_it_repeats(tmp_path, mlflow_store, retried_by):
    # runner: the next local run finds trial 0 RUNNING and queues it again (retry_of); heartbeat: on a database
    # storage, Optuna's RetryFailedTrialCallback fails the stale trial and adds the retry (retry_history)
    from common.checkpoint import load_checkpoint
    from common.config import check_overrides
    from phase1.train import train
    from sweeps.run import trial_overrides, trial_root

    path = tmp_path / "retried.yaml"
    text = textwrap.dedent(TINY.format(name="retried", gammas="[0.001]", n=1))
    path.write_text(
        text.replace("loop.max_steps=2,", "loop.max_steps=4, loop.ckpt_every=2,").replace(
            "overrides: [", f"overrides: [paths.output_root={tmp_path / 'out'}, "
        )
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_study(str(path))
    study = open_study(spec, storage)
    root = tmp_path / "out" / trial_root(study)
    # a worker that died in trial 0 after its checkpoint at step 2 of 4: its trial RUNNING, its folder kept
    dead = study.ask()
    params = {"optim.gamma": dead.suggest_categorical("optim.gamma", [0.001]),
              "optim.w_lr": dead.suggest_categorical("optim.w_lr", [0.01, 0.05])}  # fmt: skip
    partial = trial_overrides(spec, "demo", params, dead.number, None, "mlflow", None)
    train(check_overrides("phase1", [*partial, "loop.max_steps=2", f"checkpoint.dir={root / 'trial-0'}"]))
    dead_run = _trial_runs(mlflow_store, "retried").run_id.tolist()
    if retried_by == "heartbeat":
        from optuna.storages import RetryFailedTrialCallback
        from optuna.trial import TrialState

        study.tell(dead, state=TrialState.FAIL)  # what the heartbeat check does to a stale trial, then:
        RetryFailedTrialCallback(max_retry=3)(study, study.trials[0])

    summary = run_study(str(path), storage=storage)
    assert (summary["n_complete"], summary["n_fail"]) == (1, 1)
    retry = next(t for t in open_study(spec, storage).trials if t.number == 1)
    assert retry.params == params
    if retried_by == "runner":
        assert retry.user_attrs["retry_of"] == 0
    else:
        assert retry.system_attrs["retry_history"] == [0]
    assert retry.user_attrs["resumed_from"] == str(root / "trial-0" / "last.pt")
    final = load_checkpoint(root / "trial-1" / "last.pt")
    assert final["global_step"] == 4
    assert [h["step"] for h in final["history"] if "val/loss" in h] == [2, 4]  # step 2 from trial 0, not redone
    runs = _trial_runs(mlflow_store, "retried")
    trial_runs = runs[runs["tags.kind"] != "study"]
    assert trial_runs.run_id.tolist() == dead_run  # one training, one MLflow run, carried on by the retry
    run = trial_runs.iloc[0]
    assert (run["tags.optuna_trial"], run["tags.optuna_retry_of"], run["tags.optuna_state"]) == ("1", "0", "COMPLETE")
    assert run["status"] == "FINISHED"
