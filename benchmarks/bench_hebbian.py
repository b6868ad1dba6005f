"""Hebbian memory (chunked form) beside flash-linear-attention's chunk_simple_gla and PyTorch SDPA attention.

    PYTHONPATH=. python benchmarks/bench_hebbian.py --out benchmarks/results/hebbian.json
    (fla comes from a wheel: pip install --no-deps fla-core into a folder on PYTHONPATH)

The same operation three ways, bf16, 4 heads x 64, 65,536 tokens per call (batch = 65536 / T):
  ours   phase2.ops.hebbian, chunk 64: Triton kernels (a state scan and the output forward; the scan reversed
         for the state gradients and the gradient step backward), the log-decay gradient a reverse
         cumulative sum
  fla    chunk_simple_gla(q, k, v, g, scale=1): data-dependent scalar decay, the same recurrence
  sdpa   F.scaled_dot_product_attention(causal): what the memory replaces
Times are medians of triton.testing.do_bench; forward + backward means gradients to q, k, v and the
log-decay g (SDPA: q, k, v).

Before any timing, on this GPU (Triton 3.4 to 3.7.0 miscompiles some backward kernels on Hopper, so
interpreter tests are not enough): our kernels in float32 against the token-by-token recurrence
(outputs, final state, every gradient, with an initial state); bf16 against float32; the gate-scan kernel
against its PyTorch reference; fla's outputs and gradients against the same recurrence. fla refuses its
gated backward on Hopper with Triton < 3.7.1 (fla issue #640); the benchmark lifts that guard to time it and
reports the gradient errors it measured beside the times.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

from phase2.ops.hebbian import hebbian_memory
from phase2.ops.memory_gates import GateParams, Gates, gate_scan
from phase2.zeta import zeta_mode_basis

H, D = 4, 64


def rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def inputs(B, T, dtype, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, device=device) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # the model's unit-norm queries and keys
    g = F.logsigmoid(torch.randn(B, H, T, generator=gen, device=device) + 4.0)  # decays around exp(-0.02)
    return q.to(dtype), k.to(dtype), v.to(dtype), g


def grads_of(fn, leaves, w, wS=None):
    o, S = fn(*leaves)
    loss = (o.float() * w).sum() + ((S.float() * wS).sum() if wS is not None else 0.0)
    return o, S, torch.autograd.grad(loss, leaves)


def check_ours(device) -> dict:
    out = {}
    for T in (1, 63, 1000):  # one chunk, a partial chunk, many chunks
        q, k, v, g = inputs(2, T, torch.float32, seed=T, device=device)
        S0 = torch.randn(2, H, D, D, device=device)
        leaves = [x.requires_grad_(True) for x in (q, k, v, g, S0)]
        w, wS = torch.randn(2, H, T, D, device=device), torch.randn(2, H, D, D, device=device)
        ref = grads_of(lambda *a: hebbian_memory(*a, mode="recurrent"), leaves, w, wS)
        got = grads_of(lambda *a: hebbian_memory(*a, chunk_size=64, impl="triton"), leaves, w, wS)
        out[f"fp32_T{T}"] = {
            "o": rel(got[0], ref[0]),
            "S": rel(got[1], ref[1]),
            **{f"d{n}": rel(a, r) for n, a, r in zip(("q", "k", "v", "g", "S0"), got[2], ref[2])},
        }
        if T == 1000:
            half = [x.detach().to(torch.bfloat16).requires_grad_(True) for x in (q, k, v)] + [
                x.detach().requires_grad_(True) for x in (g, S0)
            ]
            got16 = grads_of(lambda *a: hebbian_memory(*a, chunk_size=64, impl="triton"), half, w, wS)
            out["bf16_vs_fp32_recurrence"] = {
                "o": rel(got16[0], ref[0]),
                **{f"d{n}": rel(a, r) for n, a, r in zip(("q", "k", "v", "g", "S0"), got16[2], ref[2])},
            }
    worst = max(v for key, row in out.items() if key.startswith("fp32") for v in row.values())
    worst16 = max(out["bf16_vs_fp32_recurrence"].values())
    out["ok"] = worst < 1e-4 and worst16 < 3e-2
    return out


def check_gate_scan(device) -> dict:
    gen = torch.Generator(device=device).manual_seed(3)
    B, T = 2, 1000
    k = F.normalize(torch.randn(B, H, T, D, generator=gen, device=device), dim=-1)
    v = torch.randn(B, H, T, D, generator=gen, device=device)
    gamma = 0.01 + 0.02 * torch.rand(B, H, T, generator=gen, device=device)
    p = GateParams(64, 0.1, 2.0, 2.0, 1.5, 0.01, 0.1, True)
    args = (
        k,
        v,
        gamma,
        torch.zeros(B, H, D, D, device=device),
        Gates.initial(B, H, D, device),
        zeta_mode_basis(D).float().to(device),
        torch.full((H,), 0.5, device=device),
        p,
        0,
    )
    a, b = gate_scan(*args, impl="triton"), gate_scan(*args, impl="torch")
    out = {
        n: rel(getattr(a, n), getattr(b, n)) for n in ("gamma", "eta", "key", "snr", "energy", "share", "end_energy")
    }
    out["ok"] = max(out.values()) < 1e-4
    return out


def load_fla():
    try:
        import fla
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as err:  # recorded in the results: the comparison is then missing, and says why
        return None, f"import failed: {err}"
    return chunk_simple_gla, getattr(fla, "__version__", "?")


def lift_fla_guard() -> bool:
    """fla raises in its gated backward on Hopper with Triton < 3.7.1; lift it (errors are measured)."""
    import fla.ops.common.chunk_o as chunk_o

    lifted = not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True)
    chunk_o.TRITON_ABOVE_3_7_1 = True
    return lifted


def fla_fn(chunk_simple_gla):
    # fla's layout is (B, T, H, K); inputs are transposed once, outside the timed calls
    return lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, scale=1.0)[0]


def to_fla(*xs):
    return [x.transpose(1, 2).contiguous().detach() for x in xs]


def check_fla(chunk_simple_gla, device) -> dict:
    q, k, v, g = inputs(2, 1000, torch.float32, seed=1000, device=device)
    r_leaves = [x.requires_grad_(True) for x in (q, k, v, g)]
    r_o, _ = hebbian_memory(*r_leaves, mode="recurrent")
    do = torch.randn_like(r_o)
    r_g = torch.autograd.grad((r_o * do).sum(), r_leaves)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ins = [x.requires_grad_(True) for x in to_fla(q.to(dtype), k.to(dtype), v.to(dtype), g)]
        o = fla_fn(chunk_simple_gla)(*ins)
        got = torch.autograd.grad((o.transpose(1, 2).float() * do).sum(), ins)
        out[name] = {
            "o": rel(o.transpose(1, 2), r_o),
            **{f"d{n}": rel(a.transpose(1, 2), r) for n, a, r in zip("qkvg", got, r_g)},
        }
    return out


def sdpa(q, k, v, g):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def ours(q, k, v, g):
    return hebbian_memory(q, k, v, g, chunk_size=64, impl="triton")[0]


def time_fwd_bwd(fn, args, grad_idx, ms):
    """Medians (ms) of forward alone and forward + backward to every input in grad_idx."""
    leaves = [a.detach().requires_grad_(i in grad_idx) for i, a in enumerate(args)]
    want = [leaves[i] for i in grad_idx]
    do = torch.randn_like(fn(*leaves))
    torch.autograd.grad(fn(*leaves), want, do)  # first calls compile (and autotune, for fla)
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(*leaves), warmup=25, rep=ms, return_mode="median")
    both = triton.testing.do_bench(
        lambda: torch.autograd.grad(fn(*leaves), want, do), warmup=25, rep=ms, return_mode="median"
    )
    return fwd, both


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--no-fla", action="store_true", help="skip fla (its first calls autotune for minutes)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time every op this many times per length (interleaved); the row keeps each op's median and all repeats",
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_hebbian needs a CUDA GPU (the CPU tests cover correctness)")
    device = "cuda"
    chunk_simple_gla, fla_version = (None, "not run (--no-fla)") if args.no_fla else load_fla()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "fla": fla_version,
        "heads": H,
        "head_dim": D,
        "tokens_per_call": args.tokens,
        "dtype": "bfloat16",
        "chunk_size": 64,
        "checks": {},
        "rows": [],
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    t0 = time.time()
    result["checks"]["ours"] = check_ours(device)
    result["checks"]["gate_scan_fp32_vs_torch"] = check_gate_scan(device)
    if chunk_simple_gla is not None:
        result["fla_guard_lifted"] = lift_fla_guard()
        start = time.time()
        result["checks"]["fla_vs_fp32_recurrence"] = check_fla(chunk_simple_gla, device)
        result["fla_first_calls_s"] = round(time.time() - start, 1)
    print(json.dumps(result["checks"], indent=1), flush=True)
    save()

    for T in args.lengths:
        B = max(1, args.tokens // T)
        q, k, v, g = inputs(B, T, torch.bfloat16, seed=T, device=device)
        row = {"T": T, "B": B}
        candidates = [("ours", ours, (0, 1, 2, 3)), ("sdpa", sdpa, (0, 1, 2))]
        if chunk_simple_gla is not None:
            candidates.append(("fla", fla_fn(chunk_simple_gla), (0, 1, 2, 3)))
        times = {name: [] for name, _, _ in candidates}
        for _ in range(args.repeat):
            for name, fn, grad_idx in candidates:
                data = to_fla(q, k, v, g) if name == "fla" else (q, k, v, g)
                start = time.time()
                times[name].append(time_fwd_bwd(fn, data, grad_idx, args.rep_ms))
                print(
                    f"T={T} {name}: fwd {times[name][-1][0]:.3f} ms, fwd+bwd {times[name][-1][1]:.3f} ms "
                    f"({time.time() - start:.0f} s)",
                    flush=True,
                )
        for name, runs in times.items():
            row[name] = [sorted(r[i] for r in runs)[len(runs) // 2] for i in (0, 1)]  # median over repeats
            if args.repeat > 1:
                row[f"{name}_repeats"] = runs
        for other in ("fla", "sdpa"):
            if other in row:
                row[f"ours_over_{other}"] = [row["ours"][i] / row[other][i] for i in (0, 1)]
        result["rows"].append(row)
        save()
    result["seconds"] = round(time.time() - t0, 1)
    result["platform"] = platform.platform()
    save()
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
