"""Helpers for the tests that start real servers (PostgreSQL, SLURM, dashboards) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(*packages: str) -> None:
    """Debian packages for a test's real server, when we may install them (root, apt-get); apt caches the
    download, so only a first run pays for it. `make test-deps` installs the same ones in CI."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise FileNotFoundError(f"{' '.join(packages)} missing, and only root with apt-get may install them")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=quiet, check=True, capture_output=True, text=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], env=quiet, check=True, capture_output=True, text=True
    )


def skip_unless_ci(what: str, err: BaseException) -> None:
    """CI must exercise the real server: failing to start it there is a failure, elsewhere a skip with why."""
    if os.environ.get("CI"):
        raise err
    pytest.skip(f"no {what} could be started here ({getattr(err, 'stderr', '') or err})")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def wait_http(url: str, seconds: float, server: subprocess.Popen | None = None) -> None:
    """Until `url` answers 200; a `server` process that exits meanwhile fails at once with what it printed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:  # a bad storage, a taken port: no use waiting on it
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"the server exited with {server.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def chromium(*args: str, budget_ms: int = 15000) -> str:
    """Headless Chromium's stdout (e.g. --dump-dom URL) once the page's scripts had `budget_ms` of virtual time.
    Without the background-networking flags it keeps dialling out of a closed network."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--virtual-time-budget={budget_ms}",
        "--window-size=1400,900",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120).stdout
