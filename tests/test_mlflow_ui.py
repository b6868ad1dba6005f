"""`make mlflow-ui` serves the project's store; a real headless Chromium shows the Phase 1 experiment,
a run and its metrics. The screenshot is kept beside the test's temporary store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from common import REPO_ROOT
from common.tracking import MLflowLogger, ui_link
from tests.servers import CHROMIUM, chromium, free_port, wait_http

pytestmark = pytest.mark.slow


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test-deps` installs it, as root)")
def test_mlflow_ui_shows_experiment_run_and_metrics(mlflow_store, tmp_path):
    logger = MLflowLogger("phase1", run_name="ui-check-run", tags={"phase": "phase1"})
    logger.log_params({"optim": {"name": "balanced"}, "lmbda": 0.013})
    for step in range(5):
        logger.log_metrics({"train/loss": 2.0 - 0.1 * step, "test/psnr_ui_check": 30.0 + step}, step=step)
    logger.close()
    experiment_id = logger.client.get_experiment_by_name("phase1").experiment_id

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    server = subprocess.Popen(
        ["make", "-s", "mlflow-ui", f"PORT={port}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 120)
        experiments_page = chromium("--dump-dom", f"{base}/#/experiments")
        assert "phase1" in experiments_page
        # the experiment is a model-training one, and the link a run prints opens it on its runs: MLflow 3.18's
        # UI follows its GenAI / Model training switch over the experiment's kind, so the link sets the switch
        kind = logger.client.get_experiment(experiment_id).tags.get("mlflow.experimentKind")
        assert kind == "custom_model_development"
        experiment_page = chromium("--dump-dom", ui_link(base, experiment_id))
        assert "ui-check-run" in experiment_page, "the experiment's link does not open on its runs"
        run_url = f"{base}/#/experiments/{experiment_id}/runs/{logger.run_id}"
        run_page = chromium("--dump-dom", run_url)
        for text in ("phase1", "ui-check-run", "test/psnr_ui_check", "train/loss", "Finished"):
            assert text in run_page, f"{text!r} is not on the run page"
        shot = tmp_path / "mlflow_ui_run.png"
        chromium(f"--screenshot={shot}", run_url)
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    time.sleep(1)
    # "--" ends pgrep's options, or it takes the pattern for one of them and finds nothing (status 2)
    leftovers = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
    assert leftovers.returncode == 1, f"the UI server left processes behind: {leftovers.stdout or leftovers.stderr}"
    assert Path(mlflow_store.removeprefix("sqlite:///")).exists()
