"""Phase 1 training on the GPU at the scale users train at: HPCM_Base (and Large), batch 8 x 256².

    pytest -m gpu tests/phase1/test_train_gpu.py      # on a machine with a CUDA device
"""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from phase1.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BASE = ["data.patch_size=256", "data.batch_size=8", "logger=none", "device=cuda", "loop.progress=false",
        "loop.log_every=1", "optim.lr=1e-4"]


def _history(folder):
    return load_checkpoint(folder / "last.pt")["history"]


def test_real_bpp_matches_the_estimate_at_every_evaluation(tmp_path):
    """Three in-training evaluations and the final test of HPCM_Base on CUDA: real bytes within 5 % of the
    likelihoods' estimate at each (the coding tables are rebuilt per evaluation; graphs must follow them)."""
    cfg = compose("phase1", [*BASE, "model=hpcm_base", "optim=adam", "loop.max_steps=300", "loop.eval_every=100",
                             f"checkpoint.dir={tmp_path}"])
    summary = train(cfg)
    evals = [p for p in _history(tmp_path) if "val/bpp_real" in p]
    assert [int(p["step"]) for p in evals] == [100, 200, 300]
    for p in evals:
        print(f"step {int(p['step'])}: val bpp real {p['val/bpp_real']:.4f} estimate {p['val/bpp_loss']:.4f}")
        assert p["val/bpp_real"] == pytest.approx(p["val/bpp_loss"], rel=0.05)
    print(f"final test: real {summary['final/test/bpp_real']:.4f} estimate {summary['final/test/bpp_loss']:.4f}")
    assert summary["final/test/bpp_real"] == pytest.approx(summary["final/test/bpp_loss"], rel=0.05)


@pytest.mark.parametrize("model", ["tiny", "hpcm_base", pytest.param("hpcm_large", marks=pytest.mark.xfail(
    reason="goal not met yet: 4.7 % at its largest over 40 steps on one H200 (benchmarks/results/phase1_bf16.md)",
    strict=False))])
def test_bf16_mixed_losses_follow_float32_for_50_steps(model, tmp_path):
    """The same 50 batches in float32 and under bf16 autocast (entropy model in float32): every step's loss
    within 2 % of float32's."""
    losses = {}
    for precision in ("32", "bf16-mixed"):
        cfg = compose("phase1", [*BASE, f"model={model}", f"precision={precision}", "loop.max_steps=50",
                                 "loop.eval_every=1000", "eval.real_bitstreams=false", "eval.max_images=1",
                                 f"checkpoint.dir={tmp_path / precision}"])
        assert train(cfg)["skipped_steps"] == 0
        losses[precision] = [p["train/loss"] for p in _history(tmp_path / precision) if "train/loss" in p]
    gaps = [abs(b / a - 1) for a, b in zip(losses["32"], losses["bf16-mixed"])]
    worst = max(gaps)
    print(f"{model}: largest relative loss difference over 50 steps {worst:.4f} (step {gaps.index(worst) + 1})")
    print(" float32:", " ".join(f"{v:.4g}" for v in losses["32"]))
    print(" bf16:   ", " ".join(f"{v:.4g}" for v in losses["bf16-mixed"]))
    assert len(losses["32"]) == 50 and worst < 0.02
