"""The memory gate scan (phase2/ops/memory_gates) on the GPU: kernel variants, their time and their error.

    PYTHONPATH=. python benchmarks/bench_gate_scan.py --out benchmarks/results/gate_scan.json

The scan is sequential over a call's gate intervals and runs one program per (batch, head), so its time per
interval is latency: what matters is how long one program takes to evaluate the gates at a boundary and
advance the state through the interval. Variants: warps per program (4, 8); the state advance in IEEE
float32 or TF32 products. Each is checked against the PyTorch reference (gate_scan_reference) on the same
inputs: every segment's gates and boundary statistics and the final gates.
Shapes are Phase 2 `small`'s: 4 heads x 64, gate interval 64.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

from phase2.ops.memory_gates import GateParams, Gates, gate_scan_reference
from phase2.ops.memory_gates.kernels import gate_scan_triton
from phase2.zeta import zeta_mode_basis

H, D, INTERVAL = 4, 64, 64


def scan_inputs(B: int, T: int):
    gen = torch.Generator(device="cuda").manual_seed(T)
    k = F.normalize(torch.randn(B, H, T, D, generator=gen, device="cuda"), dim=-1)
    v = torch.randn(B, H, T, D, generator=gen, device="cuda")
    gamma = 0.01 + 0.02 * torch.rand(B, H, T, generator=gen, device="cuda")
    p = GateParams(INTERVAL, 0.1, 2.0, 2.0, 1.5, 0.01, 0.1, True)
    return (
        k,
        v,
        gamma,
        torch.zeros(B, H, D, D, device="cuda"),
        Gates.initial(B, H, D, "cuda"),
        zeta_mode_basis(D).float().cuda(),
        torch.full((H,), 0.5, device="cuda"),
        p,
        0,
    )


def rel(x, ref):
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="1x16384,8x2048", help="BxT pairs")
    ap.add_argument("--rep-ms", type=int, default=100)
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": []}
    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        a = scan_inputs(B, T)
        ref = gate_scan_reference(*a)
        for warps, prec in itertools.product((4, 8), ("ieee", "tf32")):
            variant = dict(precision=prec, num_warps=warps)

            def fn(a=a, variant=variant):
                return gate_scan_triton(*a, **variant)

            got = fn()
            ms = triton.testing.do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median")
            row = {
                "B": B,
                "T": T,
                "num_warps": warps,
                "precision": prec,
                "ms": ms,
                "us_per_interval": ms * 1e3 / triton.cdiv(T, INTERVAL),
                "rel_err": {
                    **{
                        n: rel(getattr(got, n), getattr(ref, n))
                        for n in ("gamma", "eta", "key", "snr", "energy", "share", "end_energy")
                    },
                    **{
                        f"final_{n}": rel(getattr(got.final, n), getattr(ref.final, n))
                        for n in ("gamma", "eta", "key", "lyapunov", "last_energy")
                    },
                },
            }
            result["rows"].append(row)
            print(
                f"B={B} T={T} warps={warps} {prec}: {ms:8.3f} ms "
                f"({row['us_per_interval']:6.1f} us/interval)  max rel err {max(row['rel_err'].values()):.1e}",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
