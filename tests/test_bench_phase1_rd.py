"""bench_phase1_rd.py --mps: the daemon is started only when none answers, stopped only by the run that started it,
and a machine without it gets one line."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_experiment_files import BENCHMARKS, _bench


@pytest.fixture
def fake_mps(tmp_path, monkeypatch):
    """An nvidia-cuda-mps-control on PATH that records its arguments and stdin, and creates the control pipe."""
    calls = tmp_path / "calls"
    script = tmp_path / "bin" / "nvidia-cuda-mps-control"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "args:$* stdin:$(cat -)" >> {calls}\n'
        '[ "$1" = "-d" ] && touch "$CUDA_MPS_PIPE_DIRECTORY/control"\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", str(tmp_path / "log"))
    return calls


def test_mps_started_once_and_stopped_by_its_starter(fake_mps):
    bench = _bench("bench_phase1_rd")
    assert bench.start_mps() is True  # no daemon answered: this call started one, the runs inherit the pipe
    assert bench.start_mps() is False  # one answers now: a second bench (or a resumed one) leaves it alone
    bench.stop_mps()
    lines = fake_mps.read_text().splitlines()
    assert [line.split(" stdin:")[0] for line in lines] == ["args:-d", "args:"]
    assert lines[1].endswith("stdin:quit")


def test_mps_missing_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-cuda-mps-control anywhere
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_phase1_rd.py"), "--mps", "--work", str(tmp_path), "--", "logger=none"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "nvidia-cuda-mps-control is not on PATH" in done.stderr
