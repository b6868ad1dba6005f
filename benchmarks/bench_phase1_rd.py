"""The Phase 1 experiment at small scale: HPCM trained with Adam and with Balanced R-D at several lambdas for
the same steps on the same photos, evaluated on held-out photos with real bitstreams; BD-rate of Balanced vs
Adam with a per-image bootstrap interval, the quality overlap of the two curves, the R-D plot, and the
training-step time of each optimizer (ratios against Adam from the same run). With --warm-start N both
optimizers continue, per lambda, from the same codec trained N steps with Adam.

    python benchmarks/bench_phase1_rd.py --out benchmarks/results/phase1_rd.json [--data-root DIR] [--parallel N]

Every run goes through phase1.train.train(cfg) (logger=none) and phase1.evaluate, as a user's would. The
step times are measured first, alone on the device; the R-D runs may then go in N parallel processes (small
models leave a GPU mostly idle between kernel launches; results do not depend on timing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from common.config import compose
from phase1 import rd
from phase1.data import image_paths
from phase1.evaluate import operating_point
from phase1.train import train


def data_overrides(args) -> list[str]:
    # a few photos read every step: decoded once and kept (data.cache), no loader processes
    if args.data_root:
        return ["data=folder", f"data.root={args.data_root}", "data.repeats=32", "data.cache=true",
                "data.num_workers=0"]
    return ["data=builtin"]


def train_run(optim: str, lmbda: float, args, ckpt_dir: Path, steps: int, init_from: Path | None = None):
    overrides = [f"model={args.model}", f"optim={optim}", f"lmbda={lmbda}", *data_overrides(args),
                 f"data.patch_size={args.patch}", f"data.batch_size={args.batch}", f"loop.max_steps={steps}",
                 f"loop.eval_every={steps}", "loop.ckpt_every=0", "loop.log_every=50",
                 f"loop.progress={args.progress}",
                 "eval.real_bitstreams=false", "logger=none", f"checkpoint.dir={ckpt_dir}", f"device={args.device}",
                 f"optim.lr={args.lr}", f"hydra.run.dir={ckpt_dir}"]
    if init_from:
        overrides.append(f"init_from={init_from}")
    start = time.perf_counter()
    summary = train(compose("phase1", overrides))
    return summary, time.perf_counter() - start


def run_point(optim: str, lmbda: float, args, folder: Path) -> dict:
    ckpt_dir = folder / f"{optim}_{lmbda}"
    warm = folder / f"warm_{lmbda}" / "last.pt" if args.warm_start else None
    summary, seconds = train_run(optim, lmbda, args, ckpt_dir, args.steps, init_from=warm)
    test = image_paths("folder", args.data_root, "test") if args.data_root else image_paths("builtin", None, "test")
    point = operating_point(ckpt_dir / "last.pt", test, torch.device(args.device))
    point.update(optim=optim, lmbda=lmbda, train_seconds=seconds, skipped_steps=summary["skipped_steps"])
    print(f"{optim:>9} lambda={lmbda:<8} bpp={point['bpp']:.4f} (estimate {point['bpp_estimate']:.4f}) "
          f"PSNR={point['psnr']:.2f} dB  train {seconds:.0f} s", flush=True)
    return point


def run_job(job: tuple):
    kind, optim, lmbda, args, folder = job
    if args.parallel > 1:
        torch.set_num_threads(1)  # N processes share the host's cores
    if kind == "warm":  # the shared start of both optimizers at this lambda: Adam for --warm-start steps
        train_run("adam", lmbda, args, folder / f"warm_{lmbda}", args.warm_start)
        return lmbda
    return run_point(optim, lmbda, args, folder)


def step_time(optim_overrides: list[str], args) -> float:
    """Median seconds per training step over a short run (after warm-up), same model and batch."""
    times = []

    def on_log(step, point):
        times.append(time.perf_counter())

    data = data_overrides(args)
    cfg = compose("phase1", [f"model={args.model}", *optim_overrides, *data, f"data.patch_size={args.patch}",
                             f"data.batch_size={args.batch}", "loop.max_steps=60", "loop.log_every=1",
                             "loop.eval_every=1000", "loop.progress=false", "logger=none", f"device={args.device}",
                             f"checkpoint.dir={tempfile.mkdtemp()}", "eval.real_bitstreams=false"])
    train(cfg, on_log=on_log)
    gaps = sorted(b - a for a, b in zip(times[10:-2], times[11:-1]))  # training steps only, after warm-up
    return gaps[len(gaps) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--adam-lambdas", default="0.0018,0.0035,0.0067,0.013,0.025")
    p.add_argument("--balanced-lambdas", default="0.0018,0.0035,0.0067,0.013,0.025")
    p.add_argument("--data-root", default=None, help="folder with train/ and test/ (default: built-in photos)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--lr", type=float, default=5e-4, help="both optimizers (HPCM's is 1e-4 for its long runs)")
    p.add_argument("--parallel", type=int, default=1, help="R-D runs at once (processes on one device)")
    p.add_argument("--skip-step-time", action="store_true")
    p.add_argument("--progress", action="store_true", help="a progress bar per run (on stderr)")
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier result file of the same settings: its finished points are kept, not rerun")
    p.add_argument("--warm-start", type=int, default=500,
                   help="first train Adam this many steps per lambda; both optimizers then start from it")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_rd.json"))
    args = p.parse_args()

    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_step_time:
        ratios = {"adam": step_time(["optim=adam"], args),
                  "balanced_second_forward": step_time(["optim=balanced"], args),
                  "balanced_next_step": step_time(["optim=balanced", "optim.task_weight_update=next_step"], args)}
        result["step_seconds"] = ratios
        result["step_time_ratio_vs_adam"] = {k: v / ratios["adam"] for k, v in ratios.items()}
        print("step time vs Adam:", result["step_time_ratio_vs_adam"], flush=True)

    folder = Path(tempfile.mkdtemp())
    jobs = [("point", optim, float(lmbda), args, folder) for optim, lambdas in
            (("adam", args.adam_lambdas), ("balanced", args.balanced_lambdas)) for lmbda in lambdas.split(",")]
    curves = {"adam": [], "balanced": []}
    if args.reuse:
        earlier = json.loads(args.reuse.read_text())
        same = ("steps", "batch", "patch", "lr", "model", "warm_start")
        if any(earlier["config"].get(k, 0) != getattr(args, k) for k in same):
            raise SystemExit(f"--reuse {args.reuse}: its {same} differ from this run's")
        for optim in curves:
            wanted = {float(x) for x in getattr(args, f"{optim}_lambdas").split(",")}
            curves[optim] = [p for p in earlier.get(optim, []) if p["lmbda"] in wanted]
        done = {(p["optim"], p["lmbda"]) for curve in curves.values() for p in curve}
        jobs = [job for job in jobs if (job[1], job[2]) not in done]
        result["reused_points"] = sorted(f"{o}@{lmbda}" for o, lmbda in done)
    # not a multiprocessing.Pool: its daemonic workers may not start the data loader's worker processes
    with ProcessPoolExecutor(max(1, args.parallel), mp_context=mp.get_context("spawn")) as pool:
        if args.warm_start:
            lambdas = sorted({job[2] for job in jobs})
            list(pool.map(run_job, [("warm", "adam", lmbda, args, folder) for lmbda in lambdas]))
        for done in as_completed([pool.submit(run_job, job) for job in jobs]):
            point = done.result()
            curves[point["optim"]].append(point)
            result.update(curves)
            args.out.write_text(json.dumps(result, indent=1) + "\n")  # keep what is done if the run is cut short
    for curve in curves.values():
        curve.sort(key=lambda p: p["lmbda"])
    result.update(curves)

    low, high, fraction = rd.quality_overlap(curves["adam"], curves["balanced"])
    result["psnr_overlap_db"] = [low, high]
    result["psnr_overlap_fraction_of_adam"] = fraction
    for optim, curve in curves.items():
        psnrs = [p["psnr"] for p in sorted(curve, key=lambda p: p["bpp"])]
        result[f"{optim}_monotone"] = all(b > a for a, b in zip(psnrs, psnrs[1:]))
    try:
        result["bd_rate_percent"] = rd.bd_rate(curves["adam"], curves["balanced"])
        result["bd_psnr_db"] = rd.bd_psnr(curves["adam"], curves["balanced"])
        result["bootstrap"] = rd.bd_rate_bootstrap(curves["adam"], curves["balanced"], samples=args.bootstrap)
    except ValueError as err:
        result["bd_rate_error"] = str(err)
    plot = args.out.with_suffix(".png")
    rd.plot_rd({"Adam": curves["adam"], "Balanced": curves["balanced"]}, plot,
               title=f"HPCM-{args.model}, " + (f"{args.warm_start} Adam + " if args.warm_start else "")
               + f"{args.steps} steps, held-out photos")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("adam", "balanced")}, indent=1))


if __name__ == "__main__":
    main()
