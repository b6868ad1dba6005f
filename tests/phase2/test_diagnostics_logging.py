"""Diagnostics exist on some steps only: what is logged is their mean over the steps that have them."""

from __future__ import annotations

import pytest

import phase2.train
from common.checkpoint import load_checkpoint
from common.config import compose


@pytest.mark.parametrize("log_every", [1, 6])
def test_logged_gamma_mean_is_the_mean_over_steps_with_diagnostics(log_every, tmp_path, monkeypatch):
    seen = []
    original = phase2.train.diagnostics_scalars

    def recording(diagnostics):
        scalars = original(diagnostics)
        seen.append(scalars["gamma_mean"])
        return scalars

    monkeypatch.setattr(phase2.train, "diagnostics_scalars", recording)
    overrides = [
        "model=debug",
        "seq_len=32",
        "batch_size=4",
        "logger=none",
        "device=cpu",
        "loop.progress=false",
        "loop.max_steps=12",
        f"loop.log_every={log_every}",
        "loop.eval_every=0",
        "diagnostics_every=3",
        f"checkpoint.dir={tmp_path}",
        f"paths.output_root={tmp_path}",
    ]
    phase2.train.train(compose("phase2", overrides))
    logged = [
        p["train/diag/gamma_mean"]
        for p in load_checkpoint(tmp_path / "last.pt")["history"]
        if "train/diag/gamma_mean" in p
    ]
    assert len(seen) == 4  # diagnostics on every 3rd of the 12 steps
    per_window = max(1, log_every // 3)  # diagnostic steps in one log window
    expected = [sum(seen[i : i + per_window]) / per_window for i in range(0, len(seen), per_window)]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert min(seen) > 0  # the quantity is positive: an average diluted by steps without it would read smaller
