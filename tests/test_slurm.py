"""SLURM: the launcher we ship (experiments/hydra/launcher/slurm.yaml) composes from the command line, and on a
real one-node cluster (Debian's slurm-wlm, tests/slurm_cluster.py) a Hydra multirun through submitit and a sweep's
job array run, log to MLflow and fill their study. Under CI a cluster that cannot start fails the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from common import REPO_ROOT
from tests import slurm_cluster
from tests.servers import apt_install, skip_unless_ci


def test_the_slurm_launcher_composes_from_the_command_line(tmp_path):
    # `--cfg hydra` prints the Hydra config that `-m` would launch with (Hydra takes one of the two at a time)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "phase1.train",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=256",
            "optim=balanced",
            f"hydra.sweep.dir={tmp_path}",
            "--cfg",
            "hydra",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    launcher = yaml.safe_load(done.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == ("gpu", 4, 4)
    assert (launcher["timeout_min"], launcher["mem_gb"], launcher["nodes"]) == (90, 256, 1)
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"  # job logs beside the sweep's runs
    assert not list(tmp_path.iterdir())  # composing submits and writes nothing


# ------------------------------------------------------------------------------------------- a real cluster
TINY_RUN = [
    "model=tiny",
    "data.patch_size=64",
    "data.batch_size=2",
    "data.repeats=1",
    "loop.max_steps=2",
    "loop.eval_every=2",
    "loop.log_every=1",
    "loop.progress=false",
    "eval.max_images=1",
    "eval.real_bitstreams=false",
    "device=cpu",
]
# what a one-node CPU cluster can give a job (slurm.yaml asks for a GPU and 64 GB)
SMALL_JOB = {"partition": "debug", "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 15}


@pytest.fixture(scope="module")
def cluster():
    # a folder outside pytest's temporary root: the daemons run as root and outlive no test
    folder = Path(tempfile.mkdtemp(prefix="research-slurm-"))
    try:
        if slurm_cluster.missing_programs():
            apt_install("slurm-wlm", "munge")
        running = slurm_cluster.start(folder)
    except (FileNotFoundError, subprocess.CalledProcessError, RuntimeError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        skip_unless_ci("SLURM cluster", err)
    yield running
    slurm_cluster.stop(running)
    shutil.rmtree(folder, ignore_errors=True)


def _runs(uri: str, filter_string: str = ""):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["phase1"], filter_string=filter_string)


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_hydra_multirun_runs_as_slurm_jobs_through_submitit(cluster, tmp_path, mlflow_store, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    launcher = [f"hydra.launcher.{k}={v}" for k, v in SMALL_JOB.items()]
    done = subprocess.run(
        [sys.executable, "-m", "phase1.train", "-m", "hydra/launcher=slurm", *launcher, "lmbda=0.0067,0.013",
         *TINY_RUN, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    slurm_cluster.wait_idle(cluster, timeout=120)  # COMPLETING ends
    runs = _runs(mlflow_store)
    assert sorted(float(x) for x in runs["params.lmbda"]) == [0.0067, 0.013]
    assert set(runs["status"]) == {"FINISHED"}
    jobs = runs["tags.slurm_job_id"].tolist()
    assert len(set(jobs)) == 2 and all(jobs)  # each run was its own SLURM job
    # the jobs' folders are Hydra's sweep subfolders, each with its checkpoints
    assert sorted(Path(d).name for d in runs["tags.run_dir"]) == ["0", "1"]
    assert all((Path(d) / "checkpoints" / "last.pt").is_file() for d in runs["tags.run_dir"])


ARRAY_STUDY = """
name: slurm_array
phase: phase1
objective: final/val/loss
overrides: [optim=balanced, paths.output_root={out}, {tiny}]
sizes:
  demo: []
search_space:
  optim.gamma: {{type: categorical, choices: [0.001, 0.01]}}
  optim.w_lr: {{type: categorical, choices: [0.01, 0.05]}}
sampler: grid
n_trials: 4
"""


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_sweep_runs_as_a_two_task_slurm_array(cluster, postgres_server, tmp_path, mlflow_store, monkeypatch):
    from sweeps.run import main, open_study
    from sweeps.study import load_study

    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    study = tmp_path / "slurm_array.yaml"
    study.write_text(textwrap.dedent(ARRAY_STUDY.format(out=tmp_path / "out", tiny=", ".join(TINY_RUN))))
    params = [f"--slurm-param={k}={v}" for k, v in SMALL_JOB.items()]
    status = main([str(study), "--slurm", "--array", "2", "--storage", postgres_server[0], *params])
    assert status == 0
    slurm_cluster.wait_idle(cluster, timeout=120)  # COMPLETING ends

    trials = open_study(load_study(str(study)), postgres_server[0]).trials
    assert sorted((t.params["optim.gamma"], t.params["optim.w_lr"]) for t in trials) == [
        (0.001, 0.01),
        (0.001, 0.05),
        (0.01, 0.01),
        (0.01, 0.05),
    ]  # fmt: skip
    assert {t.state.name for t in trials} == {"COMPLETE"}  # every grid point once, and nothing else
    runs = _runs(mlflow_store, "tags.optuna_study = 'slurm_array'")
    parent = runs[runs["tags.kind"] == "study"]
    trial_runs = runs[runs["tags.kind"] != "study"]
    assert len(parent) == 1 and len(trial_runs) == 4
    assert set(trial_runs["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    tasks = set(trial_runs["tags.slurm_job_id"])
    assert len(tasks) == 2 and all(t.rsplit("_", 1)[1] in ("0", "1") for t in tasks)  # both array tasks worked


def test_array_job_settings_are_the_hydra_launchers_with_changes():
    from sweeps.slurm import job_settings

    settings = job_settings(["partition=gpu", "timeout_min=90"])
    launcher = yaml.safe_load((REPO_ROOT / "experiments/hydra/launcher/slurm.yaml").read_text())
    assert settings["slurm_partition"] == "gpu" and settings["timeout_min"] == 90
    assert settings["gpus_per_node"] == launcher["gpus_per_node"] and settings["mem_gb"] == launcher["mem_gb"]
    assert "slurm_account" not in settings  # null in the file: left to the cluster's default
    with pytest.raises(ValueError, match="--slurm-param 'gpu=1': give key=value with key one of"):
        job_settings(["gpu=1"])
    with pytest.raises(ValueError, match="keep nodes=1 and tasks_per_node=1"):
        job_settings(["tasks_per_node=4"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--slurm"], "--slurm and --array N go together"),
        (["--array", "2"], "--slurm and --array N go together"),
        (["--slurm", "--array", "2", "--gpus", "0,1"], "--slurm places its workers itself"),
        (["--slurm", "--array", "2"], "--slurm needs --storage"),
        (["--slurm", "--array", "2", "--storage", "sqlite:///x.db"], "is a local file; the array's tasks run"),
    ],
)
def test_slurm_sweep_arguments_are_checked(argv, message, capsys):
    from sweeps.run import main

    try:
        status = main(["balanced", "--logger", "none", *argv])
    except SystemExit as stop:  # argparse's own errors
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
