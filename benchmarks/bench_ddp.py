"""Data-parallel scaling: training throughput with 1 and N processes (DistributedDataParallel, NCCL on GPUs,
gloo on the CPU), the per-process batch fixed, for Phase 2 `small` and Phase 1 HPCM-tiny.

    python benchmarks/bench_ddp.py --gpus 2 --out benchmarks/results/ddp.json
    python benchmarks/bench_ddp.py --device cpu --gpus 2 --steps 3 --out /tmp/ddp.json    # a smoke run

Every process runs the real train(cfg) (logger=none); throughput is read on rank 0 from the loop's own clock
(items per second over the logged windows after the first), times the number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, phase: str, overrides: list[str], out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from common.config import compose

    train = __import__(f"{phase}.train", fromlist=["train"]).train
    rates = []
    train(compose(phase, overrides), on_log=lambda step, p: rates.append(p.get("train/items_per_s")))
    if rank == 0:
        Path(out).write_text(json.dumps([r for r in rates if r is not None]))


def measure(phase: str, overrides: list[str], world: int) -> float:
    """Items (tokens or images) per second over all processes, the first logged window left out."""
    out = Path(tempfile.mkdtemp()) / "rates.json"
    mp.start_processes(
        _worker, args=(world, _free_port(), phase, overrides, str(out)), nprocs=world, start_method="spawn"
    )
    rates = json.loads(out.read_text())[1:]
    if not rates:
        raise RuntimeError(f"{phase}: too few logged windows; raise --steps")
    return world * sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=2, help="the N of the N-process runs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--text", default=None, help="text folder for Phase 2 (default: the built-in corpus)")
    p.add_argument("--images", default=None, help="image folder with train/ for Phase 1 (default: built-in)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp.json"))
    args = p.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but {torch.cuda.device_count()} CUDA devices are visible")
    cpu = args.device == "cpu"
    log = max(1, args.steps // 4)
    loop = [
        f"loop.max_steps={args.steps}",
        f"loop.log_every={log}",
        "loop.eval_every=0",
        "loop.ckpt_every=0",
        "loop.progress=false",
        "logger=none",
        f"device={args.device}",
        f"paths.output_root={tempfile.mkdtemp()}",
        f"checkpoint.dir={tempfile.mkdtemp()}",
    ]
    text = ["data=file", f"data.path={args.text}"] if args.text else ["data=builtin"]
    images = (
        ["data=folder", f"data.root={args.images}", "data.repeats=32", "data.cache=true", "data.num_workers=0"]
        if args.images
        else ["data=builtin"]
    )
    cases = {
        "phase2": [
            "model=debug" if cpu else "model=small",
            *text,
            f"seq_len={64 if cpu else 512}",
            f"batch_size={4 if cpu else 16}",
            "diagnostics_every=0",
            *([] if cpu else ["precision=bf16-mixed"]),
            *loop,
        ],
        "phase1": [
            "model=tiny",
            *images,
            f"data.patch_size={64 if cpu else 256}",
            f"data.batch_size={2 if cpu else 8}",
            "eval.real_bitstreams=false",
            *loop,
        ],
    }
    result = {
        "device": "cpu" if cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "processes": args.gpus,
        "steps": args.steps,
        "cases": {},
    }
    for phase, overrides in cases.items():
        one, many = measure(phase, overrides, 1), measure(phase, overrides, args.gpus)
        result["cases"][phase] = {
            "overrides": overrides,
            "items_per_s_1": one,
            f"items_per_s_{args.gpus}": many,
            "scaling": many / one,
            "efficiency": many / one / args.gpus,
        }
        print(
            f"{phase}: {one:,.0f} items/s with 1 process, {many:,.0f} with {args.gpus} ({many / one:.2f}x)", flush=True
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
