"""Hebbian memory (chunked form) beside flash-linear-attention's chunk_simple_gla and PyTorch SDPA attention.

    PYTHONPATH=. python benchmarks/bench_hebbian.py --out benchmarks/results/hebbian.json
    (fla comes from a wheel: pip install --no-deps fla-core==0.6.0 into a folder on PYTHONPATH)

The same operation three ways, bf16, 4 heads x 64, 65,536 tokens per call (batch = 65536 / T):
  ours         phase2.ops.hebbian chunked form, chunk 64: PyTorch for the chunk states and the carry, the
               output step in one Triton kernel ("triton") or in PyTorch ("torch"); backward by autograd, the
               kernel's backward its own
  fla          chunk_simple_gla(q, k, v, g, scale=1): data-dependent scalar decay, the same recurrence
  sdpa         F.scaled_dot_product_attention(causal): what the memory replaces
Times are medians of triton.testing.do_bench. Before timing, on this GPU: the Triton kernel's forward and
backward against the PyTorch expression (float32, exact products), the bf16 op against the float32 one,
the chunked form against the recurrence, and fla's output against ours.
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
from phase2.ops.hebbian.chunk import chunk_o_torch
from phase2.ops.hebbian.triton import chunk_o_triton

H, D = 4, 64


def rel(x, ref):
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def inputs(B, T, dtype, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, device=device) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # the model's unit-norm queries and keys
    g = F.logsigmoid(torch.randn(B, H, T, generator=gen, device=device) + 4.0)  # decays around exp(-0.02)
    return q.to(dtype), k.to(dtype), v.to(dtype), g


def ours(impl):
    return lambda q, k, v, g: hebbian_memory(q, k, v, g, chunk_size=64, impl=impl)[0]


def checks(device):
    """Correctness on this GPU before any timing."""
    out = {}
    gen = torch.Generator(device=device).manual_seed(1)
    N, C = 37, 64
    q, k, v = (torch.randn(N, C, D, generator=gen, device=device) for _ in range(3))
    b = (-0.05 * torch.rand(N, C, generator=gen, device=device)).cumsum(-1)
    S = torch.randn(N, D, D, generator=gen, device=device)
    leaves = [x.requires_grad_(True) for x in (q, k, v, b, S)]
    w = torch.randn(N, C, D, generator=gen, device=device)
    res = []
    for fn in (chunk_o_torch, chunk_o_triton):
        o = fn(*leaves)
        res.append((o, torch.autograd.grad((o * w).sum(), leaves)))
    out["kernel_fp32_rel_err"] = {"o": rel(res[1][0], res[0][0]),
                                  **{f"d{n}": rel(a, r) for n, a, r in zip("qkvbS", res[1][1], res[0][1])}}

    B, T = 2, 1000
    q, k, v, g = inputs(B, T, torch.float32, seed=2, device=device)
    leaves = [x.requires_grad_(True) for x in (q, k, v, g)]
    do = torch.randn(B, H, T, D, device=device)
    ref_o, _ = hebbian_memory(*leaves, mode="recurrent")
    ref_g = torch.autograd.grad((ref_o * do).sum(), leaves)
    o, _ = hebbian_memory(*leaves, chunk_size=64, impl="triton")
    got_g = torch.autograd.grad((o * do).sum(), leaves)
    out["op_fp32_vs_recurrence_rel_err"] = {"o": rel(o, ref_o), **{f"d{n}": rel(a, r) for n, a, r in
                                                                     zip("qkvg", got_g, ref_g)}}
    bf = [x.detach().to(torch.bfloat16).requires_grad_(True) for x in (q, k, v)]
    bf.append(g.detach().requires_grad_(True))
    o16, _ = hebbian_memory(*bf, chunk_size=64, impl="triton")
    g16 = torch.autograd.grad((o16.float() * do).sum(), bf)
    out["op_bf16_vs_fp32_recurrence_rel_err"] = {"o": rel(o16, ref_o), **{f"d{n}": rel(a, r) for n, a, r in
                                                                          zip("qkvg", g16, ref_g)}}
    return out, (q.detach(), k.detach(), v.detach(), g.detach(), ref_o.detach())


def load_fla():
    try:
        import fla
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as err:  # recorded in the results: the comparison is then missing, and says why
        return None, f"import failed: {err}"
    return chunk_simple_gla, getattr(fla, "__version__", "?")


def fla_fn(chunk_simple_gla):
    # fla's layout is (B, T, H, K); the transposes are outside the timed call
    return lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, scale=1.0)[0]


def to_fla(q, k, v, g):
    return (q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(),
            g.transpose(1, 2).contiguous())


def sdpa(q, k, v, g):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_fwd_bwd(fn, args, grad_idx, ms):
    """Medians (ms) of forward alone and forward + backward to every input in grad_idx."""
    leaves = [a.detach().requires_grad_(i in grad_idx) for i, a in enumerate(args)]
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(*leaves), warmup=25, rep=ms, return_mode="median")
    want = [leaves[i] for i in grad_idx]
    o = fn(*leaves)
    do = torch.randn_like(o)

    def step():
        torch.autograd.grad(fn(*leaves), want, do)

    try:
        both = triton.testing.do_bench(step, warmup=10, rep=ms, return_mode="median")
    except RuntimeError as err:  # fla refuses its gated backward on some Triton/GPU pairs: say so
        both = f"refused: {str(err).splitlines()[0]}"
    return fwd, both


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--no-fla", action="store_true", help="skip fla (its first calls autotune for minutes)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_hebbian needs a CUDA GPU (the CPU tests cover correctness)")
    device = "cuda"
    chunk_simple_gla, fla_version = (None, "not run (--no-fla)") if args.no_fla else load_fla()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "fla": fla_version, "heads": H, "head_dim": D, "tokens_per_call": args.tokens, "dtype": "bfloat16",
              "chunk_size": 64, "rows": []}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    t0 = time.time()
    result["checks"], (q, k, v, g, ref_o) = checks(device)
    if chunk_simple_gla is not None:
        o = fla_fn(chunk_simple_gla)(*to_fla(q, k, v, g)).transpose(1, 2)
        result["checks"]["fla_fp32_vs_recurrence_rel_err"] = rel(o, ref_o)
    print(json.dumps(result["checks"], indent=1), flush=True)
    save()

    for T in args.lengths:
        B = max(1, args.tokens // T)
        q, k, v, g = inputs(B, T, torch.bfloat16, seed=T, device=device)
        row = {"T": T, "B": B}
        for name, fn in (("ours_triton", ours("triton")), ("ours_torch", ours("torch")), ("sdpa", sdpa)):
            row[name] = time_fwd_bwd(fn, (q, k, v, g), (0, 1, 2, 3) if name != "sdpa" else (0, 1, 2), args.rep_ms)
            print(T, name, row[name], flush=True)
        if chunk_simple_gla is not None:
            row["fla"] = time_fwd_bwd(fla_fn(chunk_simple_gla), to_fla(q, k, v, g), (0, 1, 2, 3), args.rep_ms)
            print(T, "fla", row["fla"], flush=True)
            row["fwd_ratio_ours_triton_over_fla"] = row["ours_triton"][0] / row["fla"][0]
        row["fwd_ratio_ours_triton_over_sdpa"] = row["ours_triton"][0] / row["sdpa"][0]
        if not isinstance(row["ours_triton"][1], str):
            row["fwd_bwd_ratio_ours_triton_over_sdpa"] = row["ours_triton"][1] / row["sdpa"][1]
        result["rows"].append(row)
        save()
    result["seconds"] = round(time.time() - t0, 1)
    result["platform"] = platform.platform()
    save()
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
