"""Step time of Balanced vs AdamW vs CautiousAdam on a ~10.7M-parameter conv autoencoder, as ratios
against torch.optim.AdamW(foreach=True) timed in the same run.

1. Optimizer step alone (fixed gradients on the model's parameter shapes).
2. Whole training step: forward, two-term loss (255^2 lambda MSE distortion + a bpp-like rate of
   noisy latents under a learned per-channel Laplace), backward, gradient clipping (1.0), step.
   Balanced runs with the second forward (RNG replayed, "second_forward") and with the one-forward
   variant ("next_step"); AdamW and CautiousAdam minimise distortion + rate.
3. On CUDA, a check that the fused Triton path gives the loop path's numbers on this model.

Samples are interleaved across variants in rounds (so drifting machine load hits all alike), each sample
timed with a device synchronisation on both sides; the medians are reported.

    python benchmarks/bench_optim.py --out benchmarks/results/optim.json            # CUDA if present
    python benchmarks/bench_optim.py --out benchmarks/results/optim.json --device cpu

The JSON keeps one entry per device type (a run replaces its own); the Markdown table beside it
(optim.md) is rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from common.optim import Balanced, CautiousAdam, capture_rng_state

LMBDA = 0.013  # a mid-range lambda of the original sweep


class ConvCodec(nn.Module):
    """Analysis/synthesis transforms shaped like a learned image codec's (N=256, M=320): ~10.7M params."""

    def __init__(self, n: int = 256, m: int = 320):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 5, stride=2, padding=2)  # noqa: E731
        deconv = lambda i, o: nn.ConvTranspose2d(i, o, 5, stride=2, padding=2, output_padding=1)  # noqa: E731
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.g_a = nn.Sequential(conv(3, n), act(), conv(n, n), act(), conv(n, n), act(), conv(n, m))
        self.g_s = nn.Sequential(deconv(m, n), act(), deconv(n, n), act(), deconv(n, n), act(), deconv(n, 3))
        self.log_scale = nn.Parameter(torch.zeros(m))

    def task_losses(self, x: torch.Tensor) -> torch.Tensor:
        y = self.g_a(x)  # (B, M, H/16, W/16)
        y = y + torch.rand_like(y) - 0.5  # training-time quantisation noise: why the RNG replay matters
        b = self.log_scale.exp()[None, :, None, None]
        cdf = lambda t: 0.5 + 0.5 * torch.sign(t) * (1 - torch.exp(-t.abs() / b))  # noqa: E731 (Laplace)
        p = (cdf(y + 0.5) - cdf(y - 0.5)).clamp_min(1e-9)
        bpp = -torch.log2(p).sum() / (x.shape[0] * x.shape[2] * x.shape[3])
        mse = ((self.g_s(y) - x) ** 2).mean()
        return torch.stack([LMBDA * 255**2 * mse, bpp])  # (distortion, rate)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict, rounds: int, per_round: int, warmup: int, device) -> dict:
    """Median seconds per call of each function, samples interleaved round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per_round):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples[k].append(time.perf_counter() - t0)
    return {
        k: {
            "median_ms": 1e3 * statistics.median(v),
            "p10_ms": 1e3 * _quantile(v, 0.1),
            "p90_ms": 1e3 * _quantile(v, 0.9),
            "samples": len(v),
        }
        for k, v in samples.items()
    }


def _quantile(v: list, q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


def make_optimizers(params_fn, device) -> dict:
    opts = {
        "adamw_foreach": lambda: torch.optim.AdamW(params_fn(), lr=1e-4, weight_decay=0.0, foreach=True),
        "adam_foreach": lambda: torch.optim.Adam(params_fn(), lr=1e-4, foreach=True),
        "cautious_adam_loop": lambda: CautiousAdam(params_fn(), lr=1e-4, impl="torch"),
        "balanced_loop": lambda: Balanced(params_fn(), lr=1e-4, impl="torch"),
    }
    if device.type == "cuda":
        opts["adamw_fused"] = lambda: torch.optim.AdamW(params_fn(), lr=1e-4, weight_decay=0.0, fused=True)
        opts["cautious_adam_fused"] = lambda: CautiousAdam(params_fn(), lr=1e-4, impl="triton")
        opts["balanced_fused"] = lambda: Balanced(params_fn(), lr=1e-4, impl="triton")
    return opts


def bench_optimizer_step(shapes, device, rounds, per_round, warmup) -> dict:
    """Optimizer step alone; every variant owns a copy of the parameters with fixed random gradients."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]

    def fresh_params():
        ps = [p.to(device, copy=True).requires_grad_() for p in init]  # each variant its own tensors
        for p, g in zip(ps, grads):
            p.grad = g.to(device, copy=True)
        return ps

    fns = {k: make().step for k, make in make_optimizers(fresh_params, device).items()}
    famo_only = Balanced(fresh_params(), lr=1e-4)  # the task-weight update by itself (2 logits)
    famo_only.get_weighted_loss(torch.tensor([1.0, 2.0], device=device))
    new_losses = torch.tensor([0.9, 1.95], device=device)
    fns["task_weight_update_alone"] = lambda: famo_only.update_task_weights(new_losses)
    return interleaved_medians(fns, rounds, per_round, warmup, device)


def bench_training_step(device, batch, size, rounds, per_round, warmup) -> dict:
    torch.manual_seed(0)
    base = ConvCodec().to(device)
    data = [torch.rand(batch, 3, size, size, device=device) for _ in range(4)]
    it = {"i": 0}

    def next_batch():
        it["i"] += 1
        return data[it["i"] % len(data)]

    def summed(opt_cls, **kw):
        model = ConvCodec().to(device)
        model.load_state_dict(base.state_dict())
        opt = opt_cls(model.parameters(), lr=1e-4, **kw)

        def step():
            x = next_batch()
            loss = model.task_losses(x).sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        return step

    def balanced(mode, impl="auto"):
        model = ConvCodec().to(device)
        model.load_state_dict(base.state_dict())
        opt = Balanced(model.parameters(), lr=1e-4, task_weight_update=mode, min_losses=[-1.0, -1.0], impl=impl)

        def step():
            x = next_batch()
            rng = capture_rng_state() if mode == "second_forward" else None
            losses = model.task_losses(x)
            opt.zero_grad()
            opt.backward_with_task_balancing(losses, model.parameters())
            opt.step()
            if mode == "second_forward":
                opt.update_task_weights_replayed(lambda: model.task_losses(x), rng)

        return step

    fns = {
        "adamw_foreach": summed(torch.optim.AdamW, weight_decay=0.0, foreach=True),
        "cautious_adam": summed(CautiousAdam),
        "balanced_second_forward": balanced("second_forward"),
        "balanced_next_step": balanced("next_step"),
    }
    if device.type == "cuda":  # the unfused step, as in the measured 1.7-1.8x of a plain implementation
        fns["balanced_second_forward_loop"] = balanced("second_forward", impl="torch")
    return interleaved_medians(fns, rounds, per_round, warmup, device)


def check_fused_matches_loop(shapes, device, steps=5) -> dict:
    """Max |difference| between fused and loop CautiousAdam parameters after a few steps on these shapes."""
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    a = [p.to(device, copy=True).requires_grad_() for p in init]
    b = [p.to(device, copy=True).requires_grad_() for p in init]
    loop, fused = (
        CautiousAdam(a, lr=1e-3, weight_decay=0.01, impl="torch"),
        CautiousAdam(b, lr=1e-3, weight_decay=0.01, impl="triton"),
    )
    for _ in range(steps):
        grads = [(torch.randn(s, generator=gen) * (torch.rand(s, generator=gen) > 0.1)).to(device) for s in shapes]
        for opt, ps in ((loop, a), (fused, b)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    moved = max((x.detach().cpu() - p0).abs().max().item() for x, p0 in zip(a, init))
    return {"steps": steps, "max_abs_param_diff": diff, "max_abs_param_change": moved}


def code_digest() -> str:
    """Short sha256 of the optimizer sources, so a kept result names the code it timed."""
    root = Path(__file__).resolve().parents[1] / "common" / "optim"
    h = hashlib.sha256()
    for name in ("cautious_adam.py", "famo.py", "balanced.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()[:12]


def ratios(result: dict, baseline: str = "adamw_foreach") -> dict:
    base = result[baseline]["median_ms"]
    return {k: v["median_ms"] / base for k, v in result.items()}


def _args_without_out(argv: list[str]) -> list[str]:
    """The command line as kept in the results: the output path is not part of the measurement."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--out="):
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        out.append(a)
    return out


def render_markdown(all_results: dict) -> str:
    lines = [
        "# Optimizer step time: Balanced vs AdamW vs CautiousAdam",
        "",
        "Ratios are medians against `torch.optim.AdamW(foreach=True)` measured in the same run. "
        "CPU numbers come from 2 shared cores and are noisy; the GPU numbers are the ones to go by. "
        "Targets: Balanced's optimizer step within 1.3x; whole training step with the second forward "
        "at most 1.5x, with the one-forward (next_step) variant at most 1.1x.",
        "",
    ]
    for _, r in sorted(all_results.items(), key=lambda kv: kv[0] != "cuda"):
        lines += [
            f"## {r['device_name']}",
            "",
            f"Command: `{r['command']}`  ",
            f"torch {r['torch']}, triton {r['triton']}; model {r['params'] / 1e6:.2f}M parameters in "
            f"{r['n_tensors']} tensors; batch {r['batch']}x3x{r['size']}x{r['size']}; "
            f"common/optim sources sha256 {r.get('code', 'not recorded')}",
            "",
            *([f"Note: {r['note']}", ""] if "note" in r else []),
            "| optimizer step alone | median | ratio |",
            "|---|---|---|",
        ]
        for k, v in r["optimizer_step"].items():
            lines.append(f"| {k} | {v['median_ms']:.3f} ms | {r['optimizer_step_ratio'][k]:.2f}x |")
        lines += ["", "| whole training step | median | ratio |", "|---|---|---|"]
        for k, v in r["training_step"].items():
            lines.append(f"| {k} | {v['median_ms']:.2f} ms | {r['training_step_ratio'][k]:.2f}x |")
        if "fused_vs_loop" in r:
            f = r["fused_vs_loop"]
            lines += [
                "",
                f"Fused vs loop CautiousAdam on these shapes after {f['steps']} steps: max |param "
                f"difference| {f['max_abs_param_diff']:.2e} (parameters moved by up to "
                f"{f['max_abs_param_change']:.2e}).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file; optim.md is written beside it")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA, 2 on the CPU")
    ap.add_argument("--size", type=int, default=None, help="image side; default: 256 on CUDA, 64 on the CPU")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds; default: 20 CUDA, 6 CPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but no CUDA device is visible; use --device cpu")
    cuda = device.type == "cuda"
    batch, size = args.batch or (8 if cuda else 2), args.size or (256 if cuda else 64)
    rounds = args.rounds or (20 if cuda else 6)
    if cuda:
        torch.backends.cudnn.benchmark = True

    shapes = [tuple(p.shape) for p in ConvCodec().parameters()]
    params = sum(math.prod(s) for s in shapes)
    print(f"{params / 1e6:.2f}M parameters in {len(shapes)} tensors on {device}", flush=True)
    opt_step = bench_optimizer_step(shapes, device, rounds, per_round=20 if cuda else 3, warmup=10 if cuda else 1)
    print(json.dumps(ratios(opt_step), indent=1), flush=True)
    train_step = bench_training_step(device, batch, size, rounds, per_round=5 if cuda else 2, warmup=5 if cuda else 1)
    print(json.dumps(ratios(train_step), indent=1), flush=True)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    result = {
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)",
        "command": " ".join(
            ["python benchmarks/bench_optim.py --out benchmarks/results/optim.json", *_args_without_out(sys.argv[1:])]
        ),
        "torch": torch.__version__,
        "triton": triton_version,
        "code": code_digest(),
        "params": params,
        "n_tensors": len(shapes),
        "batch": batch,
        "size": size,
        "lmbda": LMBDA,
        "optimizer_step": opt_step,
        "optimizer_step_ratio": ratios(opt_step),
        "training_step": train_step,
        "training_step_ratio": ratios(train_step),
    }
    if cuda:
        result["fused_vs_loop"] = check_fused_matches_loop(shapes, device)
        print(json.dumps(result["fused_vs_loop"]), flush=True)

    all_results = json.loads(args.out.read_text()) if args.out.exists() else {}
    all_results[device.type] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(all_results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(all_results))
    print(render_markdown({device.type: result}))


if __name__ == "__main__":
    main()
