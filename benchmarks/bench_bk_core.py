"""BK-Core speed on one GPU: the Triton kernels vs the naive loop, torch.compile and the HBM roofline.

    PYTHONPATH=. python benchmarks/bench_bk_core.py --out benchmarks/results/bk_core.json

The naive and torch.compile loops take about 70 s at the long regimes on an H100: give the run 5 minutes.

Regimes (chains, T) in complex64: many short chains (16384, 4096) and few long ones (256, 16384), (64, 65536).
Roofline: the bytes that must move (read a and k, write g: 24 B per element forward; backward reads g, dg, k
and writes grad a, grad k: 40 B more) over the device-to-device copy bandwidth measured in the same run.
Before timing, every Triton configuration is checked against the complex128 loop on the GPU.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch
import triton
import triton.testing

from phase2.ops.bk_core import bk_core, bk_core_reference
from phase2.ops.bk_core import kernels as bt

REGIMES = [(16384, 4096), (256, 16384), (64, 65536)]
DEVICE = "cuda"
BYTES_FWD = 24  # per element, complex64: a, k in; g out
BYTES_BWD = 40  # g, dg, k in; grad a, grad k out


def inputs(C, T, seed, dtype=torch.complex64):
    """Dissipative inputs: Im(a - z) <= -0.1, real k >= 0 (stored complex), one z per chain."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    v = torch.randn(C, T, generator=gen, device=DEVICE, dtype=real)
    gamma = 0.1 + torch.rand(C, T, generator=gen, device=DEVICE, dtype=real)
    a = torch.complex(v, -gamma)
    k = torch.nn.functional.softplus(torch.randn(C, T, generator=gen, device=DEVICE, dtype=real)).to(dtype)
    z = torch.complex(
        0.3 * torch.randn(C, generator=gen, device=DEVICE, dtype=real), 0.01 * torch.ones(C, device=DEVICE, dtype=real)
    )
    dg = torch.randn(C, T, generator=gen, device=DEVICE, dtype=dtype)
    return a, k, z, dg


def bench(fn, ms=300):
    if DEVICE == "cpu":  # --smoke: the interpreter, one run
        return wall(fn)
    return triton.testing.do_bench(fn, warmup=50, rep=ms, return_mode="median")


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def wall(fn):
    """One run, host clock around a synchronised call: for the slow loops."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return 1e3 * (time.perf_counter() - t)


def copy_bandwidth():
    x = torch.randn(1 << 28, device=DEVICE)  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)  # bytes read + written per second


def rel(x, ref):
    return ((x.to(ref.dtype) - ref).abs().norm() / ref.abs().norm()).item()


def reference(a, k, z, dg, chains):
    """Output and the three gradients of the complex128 loop (autograd) for the first `chains` chains."""
    leaves = [x[:chains].detach().to(torch.complex128).requires_grad_(True) for x in (a, k, z)]
    g = bk_core_reference(leaves[0], leaves[1], leaves[2][:, None])
    grads = torch.autograd.grad(g, leaves, dg[:chains].to(torch.complex128))
    return g.detach(), grads


def check(cfg, a, k, z, dg, ref, chains):
    """Relative errors of one configuration's kernels against the reference, on the first chains."""
    g = bt._fwd(a, k, z, cfg)
    da, dk, dz = bt._bwd(g, dg, k, cfg)
    _sync()
    g_ref, (da_ref, dk_ref, dz_ref) = ref
    return {
        "g": rel(g[:chains], g_ref),
        "da": rel(da[:chains], da_ref),
        "dk": rel(dk[:chains], dk_ref),
        "dz": rel(dz[:chains], dz_ref),
    }


def time_triton(cfg, a, k, z, dg):
    g = bt._fwd(a, k, z, cfg)
    fwd = bench(lambda: bt._fwd(a, k, z, cfg))
    bwd = bench(lambda: bt._bwd(g, dg, k, cfg))
    return fwd, bwd


def time_autograd(a, k, z, dg):
    """The public op as a model calls it: forward, and forward + backward through autograd."""
    leaves = [x.detach().requires_grad_(True) for x in (a, k, z)]
    fwd = bench(lambda: bk_core(leaves[0], leaves[1], leaves[2][:, None]))

    def fb():
        g = bk_core(leaves[0], leaves[1], leaves[2][:, None])
        torch.autograd.grad(g, leaves, dg)

    return fwd, bench(fb)


@torch.compile(dynamic=True)  # one compile for every number of chains
def _compiled_step(br, bi, kr, ki, gr, gi):
    wr = br - (kr * gr - ki * gi)
    wi = bi - (kr * gi + ki * gr)
    s = 1.0 / (wr * wr + wi * wi)
    return wr * s, -wi * s


def compiled_loop(a, k, z):
    """torch.compile of the recurrence's step: one fused kernel per position, the loop in Python."""
    b = a - z[:, None]
    br, bi = b.real.t().contiguous(), b.imag.t().contiguous()  # (T, C): each step reads rows
    kr, ki = k.real.t().contiguous(), k.imag.t().contiguous()
    gr = torch.zeros_like(br[0])
    gi = torch.zeros_like(br[0])
    outs_r, outs_i = [], []
    for t in range(br.shape[0]):
        gr, gi = _compiled_step(br[t], bi[t], kr[t], ki[t], gr, gi)
        outs_r.append(gr)
        outs_i.append(gi)
    return torch.complex(torch.stack(outs_r, 1), torch.stack(outs_i, 1))


def time_loops(a, k, z, dg, which):
    """One timed run each (after a short warm-up) of a Python-loop implementation: fwd and fwd+bwd."""
    fn = {"naive": lambda a, k, z: bk_core_reference(a, k, z[:, None]), "compiled_step": compiled_loop}[which]
    small = [x[:, :64] if x.dim() == 2 else x for x in (a, k, z)]
    leaves = [x.detach().requires_grad_(True) for x in small]
    torch.autograd.grad(fn(*leaves), leaves, dg[:, :64])  # warm-up: compiles, loads kernels
    leaves = [x.detach().requires_grad_(True) for x in (a, k, z)]
    fwd = wall(lambda: fn(*leaves))
    fb = wall(lambda: torch.autograd.grad(fn(*leaves), leaves, dg))
    return fwd, fb


def full_loop_compile(T):
    """Seconds for torch.compile to build the whole unrolled loop at this T (C = 64)."""

    def loop(br, bi, kr, ki):
        gr, gi = torch.zeros_like(br[:, 0]), torch.zeros_like(br[:, 0])
        outs = []
        for t in range(br.shape[1]):
            wr = br[:, t] - (kr[:, t] * gr - ki[:, t] * gi)
            wi = bi[:, t] - (kr[:, t] * gi + ki[:, t] * gr)
            s = 1.0 / (wr * wr + wi * wi)
            gr, gi = wr * s, -wi * s
            outs += [gr, gi]
        return torch.stack(outs, 1)

    torch._dynamo.reset()
    f = torch.compile(loop, dynamic=False)  # reset above: the time includes the whole compile
    x = [torch.randn(64, T, device=DEVICE) for _ in range(4)]
    return wall(lambda: f(*x)) / 1e3


def sweep_configs(C):
    """Kernel variants: tile (fwd and bwd alike; each direction's time is read on its own) and rows."""
    base = bt.CONFIG
    out = {}
    for tile in (8, 16):
        cfg = dataclasses.replace(base, tile_fwd=tile, tile_bwd=tile)
        if C >= base.chunk_below:
            out[f"t{tile}"] = cfg
            continue
        for rows in (16384, 32768, 65536):
            out[f"t{tile}r{rows}"] = dataclasses.replace(cfg, target_rows=rows)
    return out


def graph_time(fn):
    """GPU time alone: the calls captured in a CUDA graph and replayed (no Python, no launch gaps)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay)


def time_graph(a, k, z, dg):
    """The public op's forward, and forward + backward, replayed from CUDA graphs."""
    leaves = [x.detach().requires_grad_(True) for x in (a, k, z)]

    def f():
        return bk_core(leaves[0], leaves[1], leaves[2][:, None])

    return graph_time(f), graph_time(lambda: torch.autograd.grad(f(), leaves, dg))


def profile(a, k, z, dg):
    """Where the host time of one forward + backward through autograd goes."""
    leaves = [x.detach().requires_grad_(True) for x in (a, k, z)]

    def fb():
        g = bk_core(leaves[0], leaves[1], leaves[2][:, None])
        torch.autograd.grad(g, leaves, dg)

    for _ in range(3):
        fb()
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(5):
            fb()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/bk_core.json")
    p.add_argument("--sweep", action="store_true", help="time several kernel configurations per regime")
    p.add_argument("--no-loops", action="store_true", help="skip the naive and torch.compile loops")
    p.add_argument("--full-loop-T", type=int, default=0, help="also time torch.compile of the unrolled loop")
    p.add_argument("--profile", action="store_true", help="print a profile of the autograd path per regime")
    p.add_argument("--ref-chains", type=int, default=2, help="chains checked against the complex128 loop")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny regimes on the CPU (run with TRITON_INTERPRET=1): checks the script, times nothing",
    )
    args = p.parse_args()
    global DEVICE, REGIMES
    if args.smoke:
        DEVICE, REGIMES = "cpu", [(40, 24), (3, 100)]
        bt.CONFIG = dataclasses.replace(bt.CONFIG, chunk_below=16, target_rows=12, min_chunk=8)

    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)"
    res = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "config": dataclasses.asdict(bt.CONFIG),
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "regimes": [],
    }
    bw = copy_bandwidth() if DEVICE == "cuda" else 1e12
    res["copy_bandwidth_GBps"] = bw / 1e9
    print(f"{res['gpu']}  torch {res['torch']}  triton {res['triton']}  copy {bw / 1e9:.0f} GB/s", flush=True)

    for C, T in REGIMES:
        a, k, z, dg = inputs(C, T, seed=C + T)
        roof_f = C * T * BYTES_FWD / bw * 1e3  # ms
        roof_fb = C * T * (BYTES_FWD + BYTES_BWD) / bw * 1e3
        chains = min(args.ref_chains, C)
        ref = reference(a, k, z, dg, chains)
        r = {"chains": C, "T": T, "roofline_fwd_ms": roof_f, "roofline_fwd_bwd_ms": roof_fb, "configs": {}}
        configs = sweep_configs(C) if args.sweep else {"default": bt.CONFIG}
        for name, cfg in configs.items():
            err = check(cfg, a, k, z, dg, ref, chains)
            fwd, bwd = time_triton(cfg, a, k, z, dg)
            plan = (bt._plan(C, T, cfg, cfg.tile_fwd), bt._plan(C, T, cfg, cfg.tile_bwd))
            r["configs"][name] = {
                "plan": plan,
                "err": err,
                "fwd_ms": fwd,
                "bwd_ms": bwd,
                "fwd_roofline": roof_f / fwd,
                "fwd_bwd_roofline": roof_fb / (fwd + bwd),
            }
            print(
                f"({C}, {T}) {name:14s} L,NCH={plan[0]} fwd {fwd:.3f} ms "
                f"({100 * roof_f / fwd:.0f}%)  bwd {bwd:.3f} ms  f+b {100 * roof_fb / (fwd + bwd):.0f}%  "
                f"err {max(err.values()):.1e}",
                flush=True,
            )
        fwd, fb = time_autograd(a, k, z, dg)
        r["autograd"] = {
            "fwd_ms": fwd,
            "fwd_bwd_ms": fb,
            "fwd_roofline": roof_f / fwd,
            "fwd_bwd_roofline": roof_fb / fb,
        }
        print(
            f"({C}, {T}) bk_core autograd: fwd {fwd:.3f} ms ({100 * roof_f / fwd:.0f}%)  "
            f"fwd+bwd {fb:.3f} ms ({100 * roof_fb / fb:.0f}%)",
            flush=True,
        )
        if DEVICE == "cuda":
            gf, gfb = time_graph(a, k, z, dg)
            r["autograd_graph"] = {
                "fwd_ms": gf,
                "fwd_bwd_ms": gfb,
                "fwd_roofline": roof_f / gf,
                "fwd_bwd_roofline": roof_fb / gfb,
            }
            print(
                f"({C}, {T}) bk_core in a CUDA graph: fwd {gf:.3f} ms ({100 * roof_f / gf:.0f}%)  "
                f"fwd+bwd {gfb:.3f} ms ({100 * roof_fb / gfb:.0f}%)",
                flush=True,
            )
            if args.profile and C < bt.CONFIG.chunk_below:
                print(profile(a, k, z, dg), flush=True)
        if not args.no_loops:
            for which in ("naive", "compiled_step"):
                lf, lfb = time_loops(a, k, z, dg, which)
                r[which] = {"fwd_ms": lf, "fwd_bwd_ms": lfb}
                print(
                    f"({C}, {T}) {which}: fwd {lf:.1f} ms  fwd+bwd {lfb:.1f} ms  "
                    f"(Triton {lf / fwd:.0f}x / {lfb / fb:.0f}x faster)",
                    flush=True,
                )
        res["regimes"].append(r)
        save(res, args.out)  # after every regime: the loops at long T take minutes
        del a, k, z, dg, ref
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    if args.full_loop_T:  # last: the slowest step, and the results above are already saved
        res["full_loop_compile_s"] = {args.full_loop_T: full_loop_compile(args.full_loop_T)}
        print("torch.compile of the unrolled loop:", res["full_loop_compile_s"], flush=True)
        save(res, args.out)


def save(res, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(res))


def markdown(res):
    """A short table of one run: Triton vs the loops and the roofline, per regime."""
    lines = [
        f"# BK-Core benchmark ({res['gpu']}, complex64)",
        "",
        f"Command: `{res['command']}`  ",
        f"torch {res['torch']}, Triton {res['triton']}; "
        f"device-to-device copy {res['copy_bandwidth_GBps']:.0f} GB/s (read + write), the roofline's bandwidth.",
        "",
        "| chains x T | what | forward | forward + backward |",
        "|---|---|---|---|",
    ]
    for r in res["regimes"]:
        name = f"{r['chains']} x {r['T']}"
        roof = f"{r['roofline_fwd_ms']:.3f} ms | {r['roofline_fwd_bwd_ms']:.3f} ms"
        lines.append(f"| {name} | HBM roofline (24 / 64 B per element) | {roof} |")
        labels = {"autograd": "Triton, `bk_core` eager", "autograd_graph": "Triton, `bk_core` in a CUDA graph"}
        for key, label in labels.items():
            if key in r:
                x = r[key]
                lines.append(
                    f"| {name} | {label} | {x['fwd_ms']:.3f} ms ({100 * x['fwd_roofline']:.0f}% of "
                    f"roofline) | {x['fwd_bwd_ms']:.3f} ms ({100 * x['fwd_bwd_roofline']:.0f}%) |"
                )
        ref = r["autograd"]  # ratios against Triton eager, the slower of the two
        labels = {"naive": "naive PyTorch loop", "compiled_step": "torch.compile of the step, Python loop"}
        for key, label in labels.items():
            if key in r:
                x = r[key]
                fast, fast_fb = x["fwd_ms"] / ref["fwd_ms"], x["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
                lines.append(
                    f"| {name} | {label} | {x['fwd_ms']:.1f} ms (Triton eager {fast:.0f}x faster) "
                    f"| {x['fwd_bwd_ms']:.1f} ms ({fast_fb:.0f}x) |"
                )
    if "full_loop_compile_s" in res:
        for T, sec in res["full_loop_compile_s"].items():
            lines.append(f"\ntorch.compile of the whole unrolled loop (64 chains, T = {T}): {sec:.0f} s to compile.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
