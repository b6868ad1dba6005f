"""Phase 2 test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_interpreted():
    """Run a script whose Triton kernels execute in Triton's CPU interpreter; it must print "ok" last.

    Triton picks interpreter or compiler when a kernel is defined (its reductions are jit functions too), so
    the script runs in a fresh process with TRITON_INTERPRET=1.
    """
    pytest.importorskip("triton")

    def run(code: str, timeout: float = 600) -> str:
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.stdout[-2000:], out.stderr[-3000:])
        return out.stdout

    return run
