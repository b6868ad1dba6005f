"""SLURM through hydra-submitit-launcher: the command line a user types composes the launcher we ship
(experiments/hydra/launcher/slurm.yaml) with their overrides. Compose only: no cluster is contacted."""

from __future__ import annotations

import subprocess
import sys

import yaml

from common import REPO_ROOT


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
