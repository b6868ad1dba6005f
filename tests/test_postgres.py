"""A real PostgreSQL server (Debian's package, loopback): an Optuna study shared by 4 worker processes, and
`make mlflow-server` with it as the backend store. Under CI a server that cannot start fails the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from common import postgres
from sweeps.run import open_study, run_study
from sweeps.study import load_study
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


STUDY = """
name: {name}
phase: phase1
objective: final/val/loss
overrides: [optim=balanced, model=tiny]
sizes:
  demo: [data.patch_size=64, data.batch_size=2, data.repeats=1, loop.max_steps=1, loop.eval_every=1,
         loop.log_every=1, loop.progress=false, eval.max_images=1, eval.real_bitstreams=false]
search_space:
  optim.gamma: {{type: categorical, choices: [0.001, 0.003, 0.005, 0.01]}}
  optim.w_lr: {{type: categorical, choices: [0.01, 0.05]}}
sampler: grid
n_trials: 8
"""


def test_four_workers_share_one_study_on_postgresql(postgres_server, tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(name=name))
    url = postgres_server[0]
    summary = run_study(str(path), workers=4, storage=url, logger="none")
    assert summary["n_complete"] == 8 and summary["n_fail"] == 0
    study = open_study(load_study(str(path)), url)
    points = {(t.params["optim.gamma"], t.params["optim.w_lr"]) for t in study.trials if t.state.name == "COMPLETE"}
    assert len(points) == 8  # every grid point once: no trial lost or repeated across the 4 workers


def test_mlflow_server_on_postgresql(postgres_server, tmp_path):
    port = free_port()
    backend = postgres.start(
        postgres_server[1], int(postgres_server[0].rsplit(":", 1)[1].split("/")[0]), database="mlflow"
    )
    proc = subprocess.Popen(
        ["make", "-s", "mlflow-server", f"PORT={port}", f"BACKEND={backend}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"mlflow server did not answer: {proc.stdout.read1(4000)!r}") from None
                time.sleep(1)
        client = f"""
import mlflow
mlflow.set_tracking_uri("http://127.0.0.1:{port}")
mlflow.set_experiment("team")
with mlflow.start_run(run_name="client") as run:
    mlflow.log_metric("test/loss", 0.25, step=3)
    mlflow.log_text("hello", "note.txt")
got = mlflow.get_run(run.info.run_id)
print(got.data.metrics["test/loss"], mlflow.artifacts.load_text(got.info.artifact_uri + "/note.txt"))
"""
        done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-2:] == ["0.25", "hello"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
