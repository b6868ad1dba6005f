"""Phase 1 training on the GPU at the scale users train at: HPCM_Base (and Large), batch 8 x 256².

pytest -m gpu tests/phase1/test_train_gpu.py      # on a machine with a CUDA device
"""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from phase1.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BASE = [
    "data.patch_size=256",
    "data.batch_size=8",
    "logger=none",
    "device=cuda",
    "loop.progress=false",
    "loop.log_every=1",
    "optim.lr=1e-4",
]


def _history(folder):
    return load_checkpoint(folder / "last.pt")["history"]


def test_real_bpp_matches_the_estimate_at_every_evaluation(tmp_path):
    """Three in-training evaluations and the final test of HPCM_Base on CUDA: real bytes within 5 % of the
    likelihoods' estimate at each (the coding tables are rebuilt per evaluation; graphs must follow them)."""
    cfg = compose(
        "phase1",
        [
            *BASE,
            "model=hpcm_base",
            "optim=adam",
            "loop.max_steps=300",
            "loop.eval_every=100",
            f"checkpoint.dir={tmp_path}",
        ],
    )
    summary = train(cfg)
    evals = [p for p in _history(tmp_path) if "val/bpp_real" in p]
    assert [int(p["step"]) for p in evals] == [100, 200, 300]
    for p in evals:
        print(f"step {int(p['step'])}: val bpp real {p['val/bpp_real']:.4f} estimate {p['val/bpp_loss']:.4f}")
        assert p["val/bpp_real"] == pytest.approx(p["val/bpp_loss"], rel=0.05)
    print(f"final test: real {summary['final/test/bpp_real']:.4f} estimate {summary['final/test/bpp_loss']:.4f}")
    assert summary["final/test/bpp_real"] == pytest.approx(summary["final/test/bpp_loss"], rel=0.05)


def _losses(model: str, precision: str, folder) -> list[float]:
    cfg = compose(
        "phase1",
        [
            *BASE,
            f"model={model}",
            f"precision={precision}",
            "loop.max_steps=50",
            "loop.eval_every=1000",
            "eval.real_bitstreams=false",
            "eval.max_images=1",
            f"checkpoint.dir={folder}",
        ],
    )
    assert train(cfg)["skipped_steps"] == 0
    return [p["train/loss"] for p in _history(folder) if "train/loss" in p]


def _gaps(a: list[float], b: list[float]) -> list[float]:
    return [abs(y / x - 1) for x, y in zip(a, b)]


@pytest.mark.parametrize("model", ["tiny", "hpcm_base", "hpcm_large"])
def test_bf16_mixed_losses_follow_float32_for_50_steps(model, tmp_path):
    """The same 50 batches in float32 and under bf16 autocast (entropy model and transforms in float32): every
    step's loss within 2 % of float32's. Where float32 does not repeat itself that closely (HPCM_Large: its
    own second run on the same batches drifts up to 10 % by step 48 on one H200), bf16 may leave float32 no
    further than float32 leaves itself, at its largest and on average."""
    reference = _losses(model, "32", tmp_path / "32")
    bf16 = _gaps(reference, _losses(model, "bf16-mixed", tmp_path / "bf16"))
    worst = max(bf16)
    print(f"{model}: float32 vs bf16 largest {worst:.4f} (step {bf16.index(worst) + 1}), mean {sum(bf16) / 50:.4f}")
    assert len(reference) == 50
    if worst < 0.02:
        return
    noise = _gaps(reference, _losses(model, "32", tmp_path / "32again"))
    print(
        f"{model}: float32 vs float32 largest {max(noise):.4f} (step {noise.index(max(noise)) + 1}), "
        f"mean {sum(noise) / 50:.4f}"
    )
    assert worst <= 1.5 * max(noise) and sum(bf16) <= 1.5 * sum(noise)


def test_nothing_outlives_a_run_on_the_gpu(tmp_path):
    """Three short HPCM_Base trainings in one process (a sweep worker's life), each with an evaluation in real
    bytes (CUDA graphs recorded): after each, the GPU memory in use is back to what it was before the first."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for optim in ("adam", "balanced", "adam"):
        cfg = compose(
            "phase1",
            [*BASE, "model=hpcm_base", f"optim={optim}", "loop.max_steps=3", "loop.eval_every=3",
             "eval.max_images=1", f"paths.output_root={tmp_path / optim}"],
        )  # fmt: skip
        train(cfg)
        torch.cuda.synchronize()
        left = torch.cuda.memory_allocated() - before
        assert left < 50 * 2**20, f"after the {optim} run {left / 2**20:.0f} MiB are still allocated"
