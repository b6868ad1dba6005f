"""`make mlflow-ui` serves the project's store; a real headless Chromium shows the Phase 1 experiment,
a run and its metrics. The screenshot is kept beside the test's temporary store."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from common import REPO_ROOT
from common.tracking import MLflowLogger

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def _chromium(*args: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=15000",
        "--window-size=1400,900",
    ]
    out = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test-deps` installs it, as root)")
def test_mlflow_ui_shows_experiment_run_and_metrics(mlflow_store, tmp_path):
    logger = MLflowLogger("phase1", run_name="ui-check-run", tags={"phase": "phase1"})
    logger.log_params({"optim": {"name": "balanced"}, "lmbda": 0.013})
    for step in range(5):
        logger.log_metrics({"train/loss": 2.0 - 0.1 * step, "test/psnr_ui_check": 30.0 + step}, step=step)
    logger.close()
    experiment_id = logger.client.get_experiment_by_name("phase1").experiment_id

    port = _free_port()
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
        _wait_http(f"{base}/health", 120)
        experiments_page = _chromium("--dump-dom", f"{base}/#/experiments")
        assert "phase1" in experiments_page
        run_url = f"{base}/#/experiments/{experiment_id}/runs/{logger.run_id}"
        run_page = _chromium("--dump-dom", run_url)
        for text in ("phase1", "ui-check-run", "test/psnr_ui_check", "train/loss", "Finished"):
            assert text in run_page, f"{text!r} is not on the run page"
        shot = tmp_path / "mlflow_ui_run.png"
        _chromium(f"--screenshot={shot}", run_url)
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), "the UI server left processes behind"
    assert Path(mlflow_store.removeprefix("sqlite:///")).exists()
