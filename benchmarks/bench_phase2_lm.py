"""Phase 2 `small` beside a decoder-only Transformer with the same parameter count, on real text.

    python benchmarks/bench_phase2_lm.py --out benchmarks/results/phase2_lm.json [--data PATH]

Two parts, both byte-level (vocabulary 256, so the output layer does not hide the sequence mixers):
  quality     each model trained through phase2.train.train(cfg) (logger=none), same data, same token
              budget, same optimizer and schedule, two seeds; validation bits per byte over the whole split.
              The runs go in parallel processes on one GPU: their results do not depend on timing.
  throughput  alone on the GPU: training steps (forward, backward, AdamW) at sequence lengths 2048, 8192,
              16384 with the same tokens per step; tokens/s, time per token, peak memory; the length from
              which Phase 2's tokens/s exceeds the Transformer's. Before it, on this GPU: Phase 2's loss and
              gradients through its Triton paths against its PyTorch paths; after it, the CUDA time of one
              Phase 2 step at the longest length by operator (torch.profiler).
The Transformer's FFN width is chosen so that its parameter count matches Phase 2's (within 1 %). Transformer++
(RoPE, SwiGLU, RMSNorm; phase2/baseline.py) runs as experiments/phase2/model/transformer_pp.yaml sets it.
The training recipe (steps, window, batch, lr, schedule, precision) is experiments/phase2/experiment/
lm_comparison.yaml; --steps, --seq-len, --batch, --lr, --warmup and --precision override it.
`--data` is a text folder (default: the built-in corpus, data=builtin).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.config import compose
from phase2.baseline import TransformerLM, TransformerLMConfig
from phase2.bk_core_lm import create_phase2_model
from phase2.factory import build_model

VOCAB = 256  # byte-level tokenizer
WIDTH = dict(d_model=256, n_layers=4, n_heads=4)  # Phase 2 'small': 4 heads x 64


def phase2_model(n_seq: int):
    return create_phase2_model(preset="small", vocab_size=VOCAB, n_seq=n_seq)


def transformer_model(n_seq: int, ffn_dim: int):
    return TransformerLM(TransformerLMConfig(vocab_size=VOCAB, ffn_dim=ffn_dim, max_len=n_seq, dropout=0.0, **WIDTH))


def transformer_pp_model(n_seq: int):
    """Transformer++ as experiments/phase2/model/transformer_pp.yaml sets it (parameters matched to 'small')."""
    return build_model(compose("phase2", ["model=transformer_pp"]).model, VOCAB, n_seq)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_ffn_dim(n_seq: int) -> tuple[int, int, int]:
    """FFN width (a multiple of 8) giving the Transformer Phase 2's parameter count at this n_seq."""
    target = count(phase2_model(n_seq))
    base = count(transformer_model(n_seq, 8))
    per_unit = (count(transformer_model(n_seq, 16)) - base) / 8  # parameters per FFN unit over all layers
    ffn = max(8, int(round((8 + (target - base) / per_unit) / 8)) * 8)
    return ffn, target, count(transformer_model(n_seq, ffn))


# ----------------------------------------------------------------------------------------------- quality
def use_gate_scan(spec: str | None) -> None:
    """Set the gate-scan kernel variant ("WARPS,PRECISION") in this process; None keeps the default."""
    if spec:
        from phase2.ops.memory_gates import kernels as gate_kernel

        warps, precision = spec.split(",")
        gate_kernel.CONFIG = gate_kernel.GateScanConfig(int(warps), precision)


def quality_run(job: dict) -> dict:
    from common.config import compose
    from phase2.train import train

    torch.set_num_threads(2)
    use_gate_scan(job["gate_scan"])
    overrides = [
        *job["recipe"],
        *job["model"],
        *job["data"],
        f"seed={job['seed']}",
        "loop.progress=false",
        "logger=none",
        "device=cuda",
        f"checkpoint.dir={job['ckpt']}",
        f"hydra.run.dir={job['ckpt']}",
    ]
    cfg = compose("phase2", overrides)
    start = time.perf_counter()
    summary = train(cfg)
    if "final/val/bits_per_byte" not in summary:
        raise RuntimeError(f"{job['name']}: no final/val/bits_per_byte in the summary {sorted(summary)}")
    out = {
        "name": job["name"],
        "seed": job["seed"],
        "val_bits_per_byte": summary["final/val/bits_per_byte"],
        "val_loss": summary["final/val/loss"],
        "test_bits_per_byte": summary["final/test/bits_per_byte"],  # the whole test split, final weights
        "train_seconds": time.perf_counter() - start,
        "tokens": cfg.loop.max_steps * cfg.batch_size * cfg.seq_len,
    }
    print(
        f"{job['name']:>12} seed {job['seed']}: val {out['val_bits_per_byte']:.4f}, "
        f"test {out['test_bits_per_byte']:.4f} bits/byte "
        f"({out['train_seconds']:.0f} s)",
        flush=True,
    )
    return out


# -------------------------------------------------------------------------------------------- throughput
def time_training(model, T: int, batch: int, steps: int, warmup: int) -> dict:
    device = torch.device("cuda")
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, VOCAB, (batch, T + 1), generator=g).to(device)
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "T": T,
        "batch": batch,
        "step_ms": seconds * 1e3,
        "tokens_per_s": batch * T / seconds,
        "us_per_token": seconds / (batch * T) * 1e6,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def gradient_check() -> dict:
    """Phase 2 small on this GPU: Triton paths (gate scan, memory kernels, BK-Core) vs the PyTorch ones."""
    ids = torch.randint(0, VOCAB, (2, 257), generator=torch.Generator().manual_seed(0)).cuda()
    grads, losses = [], []
    for impl in ("auto", "torch"):
        torch.manual_seed(0)
        model = create_phase2_model(preset="small", vocab_size=VOCAB, n_seq=512, dropout=0.0, ops_impl=impl).cuda()
        for block in model.blocks:
            block.memory.impl = impl
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    errs = {n: ((grads[0][n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in grads[1].items()}
    worst = max(errs, key=errs.get)
    return {
        "loss_triton": losses[0],
        "loss_torch": losses[1],
        "max_param_grad_rel_err": errs[worst],
        "worst_param": worst,
        "ok": errs[worst] < 1e-3 and abs(losses[0] - losses[1]) < 1e-4 * losses[1],
    }


def profile_step(T: int, batch: int, top: int = 15) -> dict:
    """One Phase 2 training step (after warm-up) by operator: the top CUDA-time and the top CPU-time rows."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = phase2_model(T).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, VOCAB, (batch, T + 1)).cuda()

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()

    def row(e):
        return {
            "name": e.key[:90],
            "cuda_ms": e.device_time_total / 1e3,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "calls": e.count,
        }

    return {
        "T": T,
        "batch": batch,
        "cuda_ms_total": sum(e.self_device_time_total for e in events) / 1e3,
        "self_cpu_ms_total": sum(e.self_cpu_time_total for e in events) / 1e3,
        "top_cuda": [row(e) for e in sorted(events, key=lambda e: e.device_time_total, reverse=True)[:top]],
        "top_cpu": [row(e) for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]],
    }


def throughput(lengths: list[int], tokens_per_step: int, ffn: int, steps: int) -> dict:
    builders = {
        "phase2": phase2_model,
        "transformer": lambda n_seq: transformer_model(n_seq, ffn),
        "transformer_pp": transformer_pp_model,
    }
    out = {name: [] for name in builders}
    for T in lengths:
        batch = max(1, tokens_per_step // T)
        for name, build in builders.items():
            torch.manual_seed(0)
            row = time_training(build(T), T, batch, steps, warmup=3)
            out[name].append(row)
            print(
                f"{name:>12} T={T:>6} batch {batch}: {row['tokens_per_s']:>10.0f} tokens/s "
                f"{row['step_ms']:8.1f} ms/step  peak {row['peak_memory_gib']:.2f} GiB",
                flush=True,
            )
            torch.cuda.empty_cache()
    return out


def summarise(result: dict, lengths: list[int]) -> dict:
    q = result["quality"]
    mean = {
        m: sum(r["val_bits_per_byte"] for r in q if r["name"] == m) / sum(r["name"] == m for r in q)
        for m in dict.fromkeys(r["name"] for r in q)
    }
    p2, tf = result["throughput"]["phase2"], result["throughput"]["transformer"]
    faster = [a["T"] for a, b in zip(p2, tf) if a["tokens_per_s"] > b["tokens_per_s"]]
    flat = max(r["us_per_token"] for r in p2) / min(r["us_per_token"] for r in p2)
    return {
        "mean_val_bits_per_byte": mean,
        "bpb_ratio_phase2_vs_transformer": mean["phase2"] / mean["transformer"],
        "phase2_faster_at": faster,
        "phase2_time_per_token_max_over_min": flat,
        "speed_ratio_phase2_over_transformer": {
            str(a["T"]): a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(p2, tf)
        },
        "goals": {
            "bpb_within_10pct": mean["phase2"] <= 1.10 * mean["transformer"],
            "faster_from_8192": all(T in faster for T in lengths if T >= 8192),
            "time_per_token_flat_15pct": flat <= 1.15,
        },
    }


def recipe_overrides(args) -> list[str]:
    """The experiment file that holds the shared training recipe, and the flags given to change it."""
    flags = {
        "loop.max_steps": args.steps,
        "loop.eval_every": args.steps,  # one evaluation, at the end
        "seq_len": args.seq_len,
        "batch_size": args.batch,
        "optim.lr": args.lr,
        "schedule.warmup_steps": args.warmup,
        "precision": args.precision,
    }
    return [f"experiment={args.experiment}", *(f"{k}={v}" for k, v in flags.items() if v is not None)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="text folder (default: the built-in corpus)")
    p.add_argument("--experiment", default="lm_comparison", help="experiments/phase2/experiment/<name>.yaml")
    # each of these overrides the experiment file's value when given
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lengths", default="2048,8192,16384")
    p.add_argument("--tokens-per-step", type=int, default=16384)
    p.add_argument("--timed-steps", type=int, default=8)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument(
        "--gate-scan",
        default=None,
        metavar="WARPS,PRECISION",
        help="gate-scan kernel variant, e.g. 8,ieee (default: the kernel's CONFIG)",
    )
    p.add_argument(
        "--throughput-from",
        type=Path,
        default=None,
        help="reuse the throughput part of an earlier result file instead of measuring it",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase2_lm.json"))
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    recipe = recipe_overrides(args)
    args.seq_len = int(compose("phase2", recipe).seq_len)
    lengths = [int(t) for t in args.lengths.split(",")]
    use_gate_scan(args.gate_scan)

    ffn, p2_params, tf_params = matched_ffn_dim(args.seq_len)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "gate_scan": args.gate_scan or "default",
        "recipe": recipe,
        "parameters": {
            "phase2": p2_params,
            "transformer": tf_params,
            "transformer_pp": count(transformer_pp_model(args.seq_len)),
        },
        "transformer_ffn_dim": ffn,
    }
    print(f"parameters: Phase 2 small {p2_params:,}, Transformer {tf_params:,} (FFN {ffn})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    if args.throughput_from:
        result["throughput"] = json.loads(args.throughput_from.read_text())["throughput"]
    else:
        result["gradient_check"] = gradient_check()
        print(json.dumps(result["gradient_check"]), flush=True)
        result["throughput"] = throughput(lengths, args.tokens_per_step, ffn, args.timed_steps)
        longest = max(lengths)
        result["profile_phase2"] = prof = profile_step(longest, max(1, args.tokens_per_step // longest))
        print(
            f"profile T={longest}: CUDA {prof['cuda_ms_total']:.1f} ms, CPU {prof['self_cpu_ms_total']:.1f} ms",
            flush=True,
        )
        for kind in ("top_cuda", "top_cpu"):
            for row in prof[kind]:
                print(
                    f"{kind}: {row['cuda_ms']:8.2f} ms CUDA {row['self_cpu_ms']:8.2f} ms CPU {row['calls']:5d}x  "
                    f"{row['name']}",
                    flush=True,
                )
    args.out.write_text(json.dumps(result, indent=1) + "\n")  # keep what is done if the run is cut short

    if not args.skip_quality:
        data = ["data=file", f"data.path={args.data}"] if args.data else ["data=builtin"]
        models = {
            "phase2": ["model=small"],
            "transformer": ["model=transformer", f"model.ffn_dim={ffn}", f"model.max_len={args.seq_len}"],
            "transformer_pp": ["model=transformer_pp", f"model.max_len={args.seq_len}"],
        }
        root = Path(tempfile.mkdtemp())
        jobs = [
            dict(
                name=name,
                model=m,
                data=data,
                seed=int(s),
                recipe=recipe,
                ckpt=str(root / f"{name}_{s}"),
                gate_scan=args.gate_scan,
            )
            for s in args.seeds.split(",")
            for name, m in models.items()
        ]
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            result["quality"] = pool.map(quality_run, jobs)
        result["summary"] = summarise(result, lengths)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("summary", {}), indent=1))


if __name__ == "__main__":
    main()
