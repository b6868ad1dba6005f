"""Copy-task accuracy: Phase 2 beside the original code's encoder-decoder Transformer and a decoder-only one.

    PYTHONPATH=. python benchmarks/bench_copy_task.py --out benchmarks/results/copy_task.json [--device cpu]
    PYTHONPATH=. python benchmarks/bench_copy_task.py --runs phase2:seed:16000 --out ...   # one run

Each run trains from scratch for a fixed number of steps (fresh random strings every step, Adam + Noam,
label smoothing 0) and is scored by greedy decoding on 500 held-out strings, whole-sequence exact match,
every --eval-every steps (the curve) and at the end:
  seq2seq         the original code's encoder-decoder and settings (d 128, 2 layers, 4 heads, d_ff 512, dropout 0.1,
                  batch 32, warmup 1000)
  transformer_lm  decoder-only from the same blocks, `src <sep> src <eos>` (batch 64, Noam factor 2)
  phase2          Phase2IntegratedModel (BK-Core + gated Hebbian memory), same framing and width, chunk and
                  gate interval 16
Tasks: "digits" (10 symbols, lengths 1..10) and "seed" (99 symbols, lengths 1..20: the original code's sizes).
Runs go in parallel processes (--jobs), one math thread each. On a GPU, first: the model's gradients through
the Triton paths against the PyTorch ones.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from phase2.baseline import TransformerLM, TransformerLMConfig
from phase2.bk_core_lm import create_phase2_model
from phase2.copy_task import CopyTaskConfig, train_lm_copy, train_seq2seq_copy

TASKS = {"digits": dict(num_symbols=10, max_len=10), "seed": dict(num_symbols=99, max_len=20)}
RUNS = [
    "phase2:seed:16000",
    "phase2:digits:12000",
    "transformer_lm:digits:12000",
    "transformer_lm:seed:16000",
    "seq2seq:seed:16000",
]
WIDTH = dict(d_model=128, n_layers=2, num_heads=4, ffn=512)


def phase2_model(vocab: int, n_seq: int, **kw):
    return create_phase2_model(
        vocab_size=vocab,
        d_model=WIDTH["d_model"],
        n_layers=WIDTH["n_layers"],
        n_seq=n_seq,
        num_heads=WIDTH["num_heads"],
        head_dim=WIDTH["d_model"] // WIDTH["num_heads"],
        ffn_dim=WIDTH["ffn"],
        dropout=0.0,
        chunk_size=16,
        gate_interval=16,
        **kw,
    )


def gpu_gradient_check(device) -> dict:
    """Phase 2 on this GPU: Triton paths (gate scan, memory kernels, BK-Core) vs the PyTorch ones."""
    grads, losses = [], []
    ids = torch.randint(0, 50, (4, 48), generator=torch.Generator().manual_seed(0)).to(device)
    for triton_paths in (True, False):
        torch.manual_seed(0)
        model = phase2_model(50, 64, ops_impl="auto" if triton_paths else "torch").to(device)
        for block in model.blocks:
            block.memory.impl = "auto" if triton_paths else "torch"
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    worst = max(((grads[0][n] - grads[1][n]).norm() / grads[1][n].norm().clamp_min(1e-30)).item() for n in grads[1])
    return {"loss_triton": losses[0], "loss_torch": losses[1], "max_param_grad_rel_err": worst}


def run(job: dict) -> dict:
    name, task, steps = job["run"].split(":")
    torch.set_num_threads(1)
    device = torch.device(job["device"])
    # the original code's optimiser settings; decoder-only runs take batches of 64 and twice the Noam rate
    opt = (
        dict(batch_size=32, warmup_steps=1000, noam_factor=1.0)
        if name == "seq2seq"
        else dict(batch_size=64, warmup_steps=1000, noam_factor=2.0)
    )
    cfg = CopyTaskConfig(**TASKS[task], **opt, steps=int(steps), eval_every=job["eval_every"], eval_samples=500, seed=0)
    start = time.perf_counter()
    if name == "seq2seq":
        cfg = CopyTaskConfig(
            **{**cfg.__dict__, "d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 512, "dropout": 0.1}
        )
        result = train_seq2seq_copy(cfg, device)
        model = result.pop("model")
    else:
        torch.manual_seed(0)
        n_seq = 2 * cfg.max_len + 2
        if name == "phase2":
            model = phase2_model(cfg.lm_vocab_size, n_seq).to(device)
        elif name == "transformer_lm":
            model = TransformerLM(
                TransformerLMConfig(
                    vocab_size=cfg.lm_vocab_size,
                    d_model=WIDTH["d_model"],
                    n_layers=WIDTH["n_layers"],
                    n_heads=WIDTH["num_heads"],
                    ffn_dim=WIDTH["ffn"],
                    max_len=n_seq,
                )
            ).to(device)
        else:
            raise SystemExit(f"unknown model {name!r} in --runs; use phase2, transformer_lm or seq2seq")
        result = train_lm_copy(model, cfg, device)
    result.update(
        model=name,
        task=task,
        parameters=sum(p.numel() for p in model.parameters()),
        wall_seconds=time.perf_counter() - start,
        **TASKS[task],
    )
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", nargs="+", default=RUNS, metavar="MODEL:TASK:STEPS")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    for spec in args.runs:
        parts = spec.split(":")
        if len(parts) != 3 or parts[1] not in TASKS or not parts[2].isdigit():
            raise SystemExit(f"--runs {spec!r}: expected MODEL:TASK:STEPS with TASK in {sorted(TASKS)}")
    device = torch.device(args.device)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads_per_run": 1,
        "runs": [],
    }
    t0 = time.time()
    if device.type == "cuda":
        result["gpu_gradient_check"] = gpu_gradient_check(device)
        print(result["gpu_gradient_check"], flush=True)
    jobs = [dict(run=spec, device=args.device, eval_every=args.eval_every) for spec in args.runs]
    with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
        for r in pool.imap(run, jobs):  # in --runs order, each saved as it arrives
            result["runs"].append(r)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    result["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
