"""The shared debug presets (experiments/debug/) reach the loop of every phase, and mean the same in each.

Each case composes `debug=<preset>` for a phase as the command line would, trains through train(cfg), and
watches the loop itself: every batch it trains on (a fingerprint of its tensors), its options and its logger."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, compose
from common.loop import Loop
from common.tracking import NullLogger

PHASES = ["phase1", "phase2"]
# The smallest run of each phase; none of these keys is one a debug preset sets.
SMALL = {
    "phase1": [
        "model=tiny",
        "data.patch_size=64",
        "data.batch_size=2",
        "data.repeats=1",
        "eval.max_images=1",
        "eval.real_bitstreams=false",
    ],
    "phase2": ["model=debug", "seq_len=32", "batch_size=4", "eval.max_batches=2", "diagnostics_every=0"],
}


def preset(name: str):
    return OmegaConf.load(CONFIG_DIR / "debug" / f"{name}.yaml")


def fingerprint(batch) -> str:
    tensors = batch if isinstance(batch, list | tuple) else [batch]
    return hashlib.sha1(b"".join(t.contiguous().numpy().tobytes() for t in tensors)).hexdigest()


@pytest.fixture
def watched(monkeypatch, mlflow_store):
    """What the loop saw: the fingerprint of each training batch, and the loop itself. A run that does track
    (no preset) writes to the test's own store."""
    seen = SimpleNamespace(batches=[], loop=None)
    real_step = Loop.train_step

    def train_step(self, batch):
        seen.batches.append(fingerprint(batch))
        seen.loop = self
        return real_step(self, batch)

    monkeypatch.setattr(Loop, "train_step", train_step)
    return seen


def run(phase: str, overrides: list[str], tmp_path) -> dict:
    from importlib import import_module

    cfg = compose(
        phase,
        [
            *SMALL[phase],
            "device=cpu",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
            f"paths.output_root={tmp_path / 'outputs'}",
            *overrides,
        ],
    )
    return import_module(f"{phase}.train").train(cfg)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(
    "overrides, distinct",
    [([], 4), (["debug=overfit"], 1), (["debug=overfit", "overfit_batches=2"], 2)],
    ids=["no-overfit", "overfit", "overfit-2"],
)
def test_overfit_batches_trains_on_the_same_batches(phase, overrides, distinct, watched, tmp_path):
    """`debug=overfit` sets overfit_batches: 1, and every step trains on that one batch, crops and window offsets
    included; without it, every step draws a new batch. (Four steps instead of the preset's 200.)"""
    torch.set_num_threads(1)
    summary = run(phase, [*overrides, "loop.max_steps=4", "loop.progress=false"], tmp_path)
    assert summary["global_step"] == 4 and len(watched.batches) == 4
    assert len(set(watched.batches)) == distinct
    if overrides:
        assert preset("overfit").overfit_batches == 1 and isinstance(watched.loop.logger, NullLogger)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("name", ["fast_dev_run", "tiny"])
def test_step_presets_set_the_same_loop_in_every_phase(phase, name, watched, tmp_path):
    """fast_dev_run and tiny: the loop runs the preset's steps, logs and evaluates at its intervals, tracks
    nothing, in both phases."""
    torch.set_num_threads(1)
    knobs = preset(name).loop
    summary = run(phase, [f"debug={name}"], tmp_path)
    loop = watched.loop
    for key, value in knobs.items():
        assert getattr(loop.cfg, key) == value, key
    assert isinstance(loop.logger, NullLogger)
    assert summary["global_step"] == knobs.max_steps and len(watched.batches) == knobs.max_steps
    history = loop.state.history
    train_steps = [p["step"] for p in history if "train/loss" in p]
    val_steps = [p["step"] for p in history if "val/loss" in p]
    assert train_steps == list(range(knobs.log_every, knobs.max_steps + 1, knobs.log_every))
    assert val_steps == list(range(knobs.eval_every, knobs.max_steps + 1, knobs.eval_every))
