"""Every script in examples/ runs against the current API (the original code's usage examples)."""

import subprocess
import sys
from pathlib import Path

import pytest

from phase2.data import builtin_articles

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_basic_usage():
    out = run("phase2_basic_usage.py")
    gap = float(out.split("max |difference| ")[1].split()[0])
    assert gap < 1e-5  # streaming in pieces equals one call


@pytest.mark.slow
def test_training_then_inference_and_diagnostics(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:6]))
    out = run("phase2_training.py", "--steps", "10", "--out", str(tmp_path / "run"), "--text", str(text))
    assert "bits/byte after 10 steps" in out
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    out = run("phase2_inference.py", str(ckpt), "--text", str(text))
    assert "greedy:" in out and "batch:" in out and "perplexity" in out
    out = run("phase2_diagnostics.py", str(ckpt), "--out", str(tmp_path / "diag"))
    assert (tmp_path / "diag" / "comprehensive_report.json").exists() and "layer 1:" in out
