"""The Phase 1 experiment: HPCM trained with Adam and with Balanced R-D at several lambdas for the same steps on
the same photos, each run a real `python -m phase1.train` command line (the user's path); then every last
checkpoint coded to real bytes on the test photos; BD-rate of Balanced vs Adam with a paired per-image bootstrap,
the quality overlap of the two curves and the R-D plot.

    python benchmarks/bench_phase1_rd.py --parallel 10 --work outputs/rd_base --deadline 540 \
        --out benchmarks/results/phase1_rd_base.json

The runs' settings (model, steps, rd_set tag) are the experiment file's (--experiment, default
experiments/phase1/experiment/rd_study.yaml); --model, --steps and --rd-set override them.

Runs live in --work (one folder each). With --deadline the runs still going at that many seconds get SIGTERM,
checkpoint and stop; the script then exits with status 3 after printing each run's step, and running it again
with the same --work resumes each from its last checkpoint, so a long experiment fits commands of limited length.
With --mps the runs share the GPU through the CUDA MPS daemon (started if it is not running, stopped at the end
if this script started it), so their kernels overlap instead of taking turns; `make bench-phase1-mps` measures
the gain. With --warm-start N both
optimizers continue, per lambda, from the same codec trained N steps with Adam. Extra Hydra overrides for
every run follow `--`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from phase1 import rd
from phase1.data import image_paths
from phase1.evaluate import operating_point

INCOMPLETE = 3  # exit status: runs are left to resume
MPS_ENV = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps_pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps_log"}


def start_mps() -> bool:
    """Starts the MPS control daemon unless one answers on MPS_ENV's pipe; True when this call started it."""
    binary = shutil.which("nvidia-cuda-mps-control")
    if binary is None:
        sys.exit("error: --mps: nvidia-cuda-mps-control is not on PATH (CUDA MPS ships with the NVIDIA driver)")
    for name, folder in MPS_ENV.items():
        os.environ.setdefault(name, folder)  # the runs inherit it: that is how they find the daemon
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    if (Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"]) / "control").exists():
        return False
    started = subprocess.run([binary, "-d"], capture_output=True, text=True)
    if started.returncode != 0:
        sys.exit(f"error: --mps: nvidia-cuda-mps-control -d failed: {started.stderr.strip() or started.returncode}")
    return True


def stop_mps() -> None:
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True)


def data_overrides(args) -> list[str]:
    # a few photos read every step: decoded once and kept (data.cache), no loader processes
    if args.data_root:
        return [
            "data=folder",
            f"data.root={args.data_root}",
            "data.repeats=32",
            "data.cache=true",
            "data.num_workers=0",
        ]
    return ["data=builtin"]


def run_overrides(optim: str, lmbda: float, steps: int, folder: Path, args, init_from: Path | None) -> list[str]:
    overrides = [
        f"experiment={args.experiment}",
        *([f"model={args.model}"] if args.model else []),
        *([f"rd_set={args.rd_set}"] if args.rd_set else []),
        f"optim={optim}",
        f"lmbda={lmbda}",
        *data_overrides(args),
        f"loop.max_steps={steps}",
        "loop.progress=false",
        f"checkpoint.dir={folder}",
        f"hydra.run.dir={folder}",
        f"device={args.device}",
        *args.overrides,
    ]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    if (folder / "last.pt").is_file():
        overrides.append(f"resume={folder / 'last.pt'}")
    return overrides


def fill_from_experiment(args) -> None:
    """--model and --steps not given: the experiment file's, so this script's checks and titles match the runs."""
    chosen = [f"experiment={args.experiment}", *([f"model={args.model}"] if args.model else []), *args.overrides]
    study = compose("phase1", chosen)
    args.model = args.model or study.model.name
    args.steps = args.steps or int(study.loop.max_steps)


def steps_done(folder: Path) -> int:
    return int(load_checkpoint(folder / "last.pt")["global_step"]) if (folder / "last.pt").is_file() else 0


def finished(folder: Path, steps: int) -> bool:
    return steps_done(folder) >= steps


class Runs:
    """Runs as `python -m phase1.train` processes, at most `parallel` at a time, stopped at a deadline."""

    def __init__(self, parallel: int, deadline: float | None):
        self.parallel, self.deadline = parallel, deadline

    def run(self, jobs: list[tuple[str, list[str], Path]]) -> list[str]:
        """jobs: (name, overrides, folder); returns the names of runs that did not finish."""
        pending, running, failed, stopping = list(jobs), {}, [], False
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
        while pending or running:
            while pending and len(running) < self.parallel and not self._late():
                name, overrides, folder = pending.pop(0)
                folder.mkdir(parents=True, exist_ok=True)
                log = open(folder / "console.log", "a")  # noqa: SIM115 - all it printed; train.log is the run's own
                proc = subprocess.Popen(
                    [sys.executable, "-m", "phase1.train", *overrides], stdout=log, stderr=subprocess.STDOUT, env=env
                )
                running[name] = (proc, log)
                print(f"started {name}: {' '.join(overrides)}", flush=True)
            if self._late() and not stopping:
                for proc, _ in running.values():
                    proc.send_signal(signal.SIGTERM)  # once: the loop checkpoints and returns (twice kills)
                pending.clear()
                stopping = True
            time.sleep(2)
            for name, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[name]
                    if proc.returncode != 0 and not (stopping and proc.returncode == 128 + signal.SIGTERM):
                        failed.append(name)  # not one this script stopped at the deadline
                    print(f"{name} ended with status {proc.returncode}", flush=True)
        return failed

    def _late(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="rd_study", help="experiments/phase1/experiment/<name>.yaml")
    p.add_argument("--model", default=None, help="model preset (default: the experiment's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the experiment's)")
    p.add_argument("--adam-lambdas", default="0.0018,0.0035,0.0067,0.013,0.0483")
    p.add_argument("--balanced-lambdas", default="0.0018,0.0035,0.0067,0.013,0.0483")
    p.add_argument("--data-root", default=None, help="folder with train/ and test/ (default: built-in photos)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=1, help="runs at once (processes on one device)")
    p.add_argument(
        "--warm-start",
        type=int,
        default=0,
        help="first train Adam this many steps per lambda; both optimizers then start from it",
    )
    p.add_argument("--work", type=Path, default=Path("outputs/bench_phase1_rd"), help="run folders (resumable)")
    p.add_argument("--deadline", type=float, default=None, help="seconds from now after which runs are stopped")
    p.add_argument("--mps", action="store_true", help="share the GPU between the runs through CUDA MPS")
    p.add_argument("--rd-set", default=None, help="the runs' rd_set tag (default: the experiment's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_rd.json"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    fill_from_experiment(args)
    started_mps = args.mps and start_mps()
    try:
        return run_study(args)
    finally:
        if started_mps:
            stop_mps()


def run_study(args) -> int:
    deadline = time.time() + args.deadline if args.deadline else None
    runs = Runs(args.parallel, deadline)
    folders = {
        (o, float(lmbda)): args.work / f"{o}_{lmbda}"
        for o, lambdas in (("adam", args.adam_lambdas), ("balanced", args.balanced_lambdas))
        for lmbda in lambdas.split(",")
    }

    warm = {}
    if args.warm_start:
        for lmbda in sorted({lmbda for _, lmbda in folders}):
            warm[lmbda] = args.work / f"warm_{lmbda}"
        todo = [
            (f"warm_{lm}", run_overrides("adam", lm, args.warm_start, f, args, None), f)
            for lm, f in warm.items()
            if not finished(f, args.warm_start)
        ]
        if runs.run(todo) or not all(finished(f, args.warm_start) for f in warm.values()):
            print("warm starts unfinished: run the same command again to continue", flush=True)
            return INCOMPLETE
    todo = [
        (f"{o}_{lm}", run_overrides(o, lm, args.steps, f, args, warm[lm] / "last.pt" if warm else None), f)
        for (o, lm), f in folders.items()
        if not finished(f, args.steps)
    ]
    failed = runs.run(todo)
    unfinished = [f"{o}_{lm}" for (o, lm), f in folders.items() if not finished(f, args.steps)]
    if unfinished:
        for (o, lm), f in folders.items():
            print(f"{o}_{lm}: step {steps_done(f)} of {args.steps}", flush=True)
        print(f"unfinished: {unfinished} (failed: {failed}); run the same command again to continue", flush=True)
        return INCOMPLETE

    test = image_paths("folder", args.data_root, "test") if args.data_root else image_paths("builtin", None, "test")
    device = torch.device(args.device)
    curves = {"adam": [], "balanced": []}
    for (optim, lmbda), folder in folders.items():
        point = operating_point(folder / "last.pt", test, device)
        history = load_checkpoint(folder / "last.pt")["history"]
        point.update(
            optim=optim,
            lmbda=lmbda,
            train_history=[
                {
                    k: v
                    for k, v in h.items()
                    if k
                    in (
                        "step",
                        "train/psnr",
                        "train/bpp_loss",
                        "train/task_weight_distortion",
                        "train/effective_lambda",
                        "val/psnr",
                        "val/bpp_real",
                    )
                }
                for h in history
            ],
        )
        curves[optim].append(point)
        print(
            f"{optim:>9} lambda={lmbda:<8} bpp={point['bpp']:.4f} (estimate {point['bpp_estimate']:.4f}) "
            f"PSNR={point['psnr']:.2f} dB",
            flush=True,
        )
    for curve in curves.values():
        curve.sort(key=lambda q: q["lmbda"])
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        **curves,
    }
    low, high, fraction = rd.quality_overlap(curves["adam"], curves["balanced"])
    result.update(psnr_overlap_db=[low, high], psnr_overlap_fraction_of_adam=fraction)
    for optim, curve in curves.items():
        psnrs = [q["psnr"] for q in sorted(curve, key=lambda q: q["bpp"])]
        result[f"{optim}_monotone"] = all(b > a for a, b in zip(psnrs, psnrs[1:]))
    try:
        result["bd_rate_percent"] = rd.bd_rate(curves["adam"], curves["balanced"])
        result["bd_psnr_db"] = rd.bd_psnr(curves["adam"], curves["balanced"])
        result["bootstrap"] = rd.bd_rate_bootstrap(curves["adam"], curves["balanced"], samples=args.bootstrap)
    except ValueError as err:
        result["bd_rate_error"] = str(err)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rd.plot_rd(
        {"Adam": curves["adam"], "Balanced": curves["balanced"]},
        args.out.with_suffix(".png"),
        title=f"HPCM {args.model}, "
        + (f"{args.warm_start} Adam + " if args.warm_start else "")
        + f"{args.steps} steps, test photos (real bytes)",
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("adam", "balanced")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
