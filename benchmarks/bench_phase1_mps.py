"""Steps made by parallel HPCM runs on one GPU in the same time, time-sliced and through CUDA MPS.

    python benchmarks/bench_phase1_mps.py --seconds 120 --out benchmarks/results/phase1_parallel_mps.json

Each leg is a real bench_phase1_rd.py study (its runs are `python -m phase1.train` processes) stopped at the
same deadline in a fresh work folder; the JSON holds every run's steps and, per optimizer, the ratio of the MPS
leg's mean steps to the time-sliced leg's. Start-up (imports, CUDA context, the first step's compile) is inside
both legs alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

from common.checkpoint import load_checkpoint

STUDY = Path(__file__).with_name("bench_phase1_rd.py")


def leg(work: Path, mps: bool, args) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            str(STUDY),
            "--experiment",
            args.experiment,
            "--parallel",
            str(args.parallel),
            "--work",
            str(work),
            "--deadline",
            str(args.seconds),
            "--out",
            str(work / "unused.json"),
            *(["--mps"] if mps else []),
            "--",
            "logger=none",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 3):  # 3: stopped at the deadline, which is the point
        sys.exit(f"error: the {'MPS' if mps else 'time-sliced'} leg failed: {done.stderr.strip().splitlines()[-1:]}")
    steps = {p.parent.name: int(load_checkpoint(p)["global_step"]) for p in sorted(work.glob("*/last.pt"))}
    return {"wall_s": round(time.time() - started, 1), "steps": steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="rd_study")
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--seconds", type=float, default=120, help="each leg's deadline")
    p.add_argument("--work", type=Path, default=Path("outputs/bench_phase1_mps"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_parallel_mps.json"))
    args = p.parse_args()
    if shutil.which("nvidia-cuda-mps-control") is None:
        sys.exit("error: nvidia-cuda-mps-control is not on PATH: this benchmark needs an NVIDIA GPU with CUDA MPS")
    result = {"config": {k: str(v) for k, v in vars(args).items()}}
    result["time_sliced"] = leg(args.work / "time_sliced", False, args)
    result["mps"] = leg(args.work / "mps", True, args)
    for optim in ("adam", "balanced"):
        plain, shared = (
            [n for name, n in result[leg_]["steps"].items() if name.startswith(optim)]
            for leg_ in ("time_sliced", "mps")
        )
        result[f"{optim}_steps_ratio"] = round(mean(shared) / mean(plain), 3) if plain and shared else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.endswith("ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
