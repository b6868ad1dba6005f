"""Which part of HPCM may run under bf16 autocast: float32 twice (the GPU's run-to-run noise on the same
batches) and bf16-mixed in each region form, the largest and mean relative loss difference per step.

    python benchmarks/bench_phase1_bf16_regions.py --out benchmarks/results/phase1_bf16_regions.json   # one GPU

Forms: `kept` is the model as it is (transforms and entropy model in float32, hyperprior and context model
under autocast); `hyper_fp32` also keeps the hyperprior (h_a, h_s) in float32; `context_fp32` keeps the
context model in float32 instead. The forms are made by wrapping the model's methods for this measurement
only; the model itself has one form.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from benchmarks.bench_phase1_bf16 import gaps, losses
from phase1 import hpcm

ORIGINAL = hpcm.HPCM.__init__, hpcm.HPCM._predict, hpcm.HPCM._next_scale


def in_float32(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast("cuda", enabled=False):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            return fn(*args, **kwargs)

    return run


def use_form(name: str) -> None:
    init, predict, next_scale = ORIGINAL
    hpcm.HPCM.__init__, hpcm.HPCM._predict, hpcm.HPCM._next_scale = ORIGINAL
    if name == "hyper_fp32":

        def init_with_float32_hyperprior(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.h_a.forward = in_float32(self.h_a.forward)
            self.h_s.forward = in_float32(self.h_s.forward)

        hpcm.HPCM.__init__ = init_with_float32_hyperprior
    if name == "context_fp32":
        hpcm.HPCM._predict, hpcm.HPCM._next_scale = in_float32(predict), in_float32(next_scale)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_bf16_regions.json"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--plan",
        default="hpcm_large:kept,hyper_fp32,context_fp32;hpcm_base:kept;tiny:kept",
        help="model:form,form;model:form ...",
    )
    args = p.parse_args()
    result = {}
    for item in args.plan.split(";"):
        model, forms = item.split(":")
        use_form("kept")
        a, seconds = losses(model, "32", args.steps)
        b, _ = losses(model, "32", args.steps)
        result[model] = {"float32_vs_float32": gaps(a, b), "float32": a, "seconds_float32": seconds}
        print(model, "float32 vs float32", gaps(a, b), flush=True)
        for form in forms.split(","):
            use_form(form)
            c, seconds = losses(model, "bf16-mixed", args.steps)
            result[model][form] = {"gap": gaps(a, c), "seconds": seconds, "losses": c}
            print(model, form, gaps(a, c), round(seconds, 1), flush=True)
        args.out.write_text(json.dumps(result, indent=1))
    use_form("kept")


if __name__ == "__main__":
    main()
