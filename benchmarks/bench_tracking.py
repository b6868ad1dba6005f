"""What MLflow logging costs a training loop, as a fraction of the step time (CPU).

Runs a small training step N times with an MLflowLogger (buffered, flushed with log_batch) writing 12 metrics
every step into a fresh SQLite store, and reports the time spent in logging calls (flush included) as a
fraction of the time spent in the steps. For contrast it also times unbuffered `log_metric` calls, one per
metric, on the same store.

    python benchmarks/bench_tracking.py --out benchmarks/results/tracking.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from common.tracking import MLflowLogger, ensure_store


def make_step():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 3, 3, padding=1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, 64, 64)

    def step():
        loss = ((model(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def timed_loop(step, logger, n: int) -> tuple[float, float]:
    """(seconds in training steps, seconds in logger calls), timed separately so that load from other
    processes on the machine inflates both alike instead of landing on one side of a difference."""
    in_steps = in_logging = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        loss = step()
        t1 = time.perf_counter()
        logger.log_metrics({f"train/m{j}": loss + j for j in range(12)}, step=i)
        in_steps, in_logging = in_steps + t1 - t0, in_logging + time.perf_counter() - t1
    t0 = time.perf_counter()
    logger.flush()
    return in_steps, in_logging + time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tracking.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    step = make_step()
    for _ in range(20):
        step()  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        uri = ensure_store(f"sqlite:///{tmp}/mlflow.db")
        fractions, step_times = [], []
        for _ in range(args.repeats):
            logger = MLflowLogger("bench", tracking_uri=uri)
            in_steps, in_logging = timed_loop(step, logger, args.steps)
            logger.close()
            fractions.append(in_logging / in_steps)
            step_times.append(in_steps / args.steps)
        client = logger.client
        t0 = time.perf_counter()
        for i in range(50):
            client.log_metric(logger.run_id, "unbuffered", float(i), step=i)
        per_call_ms = (time.perf_counter() - t0) / 50 * 1e3

    step_ms = statistics.median(step_times) * 1e3
    result = {
        "steps": args.steps,
        "metrics_per_step": 12,
        "step_ms": step_ms,
        "buffered_logging_fraction_of_step_time": statistics.median(fractions),
        "unbuffered_log_metric_ms_per_call": per_call_ms,
        "unbuffered_logging_fraction_of_step_time": per_call_ms * 12 / step_ms,
        "machine": f"{platform.processor() or platform.machine()}, torch threads=1",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
