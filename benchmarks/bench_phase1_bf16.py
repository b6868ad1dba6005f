"""bf16-mixed against float32 for HPCM training: the same batches trained twice in float32 (run-to-run noise of
the GPU kernels) and once under bf16 autocast; the largest and mean relative loss difference per step.

    python benchmarks/bench_phase1_bf16.py --models tiny,hpcm_base,hpcm_large --steps 50 \
        --out benchmarks/results/phase1_bf16.json          # one GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from phase1.train import train


def losses(model: str, precision: str, steps: int) -> tuple[list[float], float]:
    folder = tempfile.mkdtemp()
    cfg = compose(
        "phase1",
        [
            f"model={model}",
            f"precision={precision}",
            "data.patch_size=256",
            "data.batch_size=8",
            "logger=none",
            "device=cuda",
            "loop.progress=false",
            "loop.log_every=1",
            f"loop.max_steps={steps}",
            "loop.eval_every=100000",
            "eval.real_bitstreams=false",
            "eval.max_images=1",
            f"checkpoint.dir={folder}",
            f"paths.output_root={folder}",
        ],
    )
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    return [p["train/loss"] for p in load_checkpoint(Path(folder) / "last.pt")["history"] if "train/loss" in p], seconds


def gaps(a: list[float], b: list[float]) -> dict:
    g = [abs(y / x - 1) for x, y in zip(a, b)]
    return {"max": max(g), "max_at_step": g.index(max(g)) + 1, "mean": sum(g) / len(g)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,hpcm_base,hpcm_large")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_bf16.json"))
    args = p.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps, "models": {}}
    for model in args.models.split(","):
        (a, ta), (b, _), (c, tc) = (losses(model, prec, args.steps) for prec in ("32", "32", "bf16-mixed"))
        result["models"][model] = {
            "float32_vs_float32": gaps(a, b),
            "float32_vs_bf16": gaps(a, c),
            "seconds_float32": ta,
            "seconds_bf16": tc,
            "float32": a,
            "bf16": c,
        }
        print(
            model,
            json.dumps({k: v for k, v in result["models"][model].items() if k not in ("float32", "bf16")}),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
