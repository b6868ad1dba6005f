"""The Phase 1 experiment at small scale: HPCM trained with Adam and with Balanced R-D at several lambdas for
the same steps on the same photos, evaluated on held-out photos with real bitstreams; BD-rate of Balanced vs
Adam with a per-image bootstrap interval, the quality overlap of the two curves, the R-D plot, and the
training-step time of each optimizer (ratios against Adam from the same run).

    python benchmarks/bench_phase1_rd.py --out benchmarks/results/phase1_rd.json [--data-root DIR]

Every run goes through phase1.train.train(cfg) (logger=none) and phase1.evaluate, as a user's would.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common.config import compose
from phase1 import rd
from phase1.data import image_paths
from phase1.evaluate import operating_point
from phase1.train import train


def run_point(optim: str, lmbda: float, args, folder: Path, extra: list[str]) -> dict:
    data = ["data=folder", f"data.root={args.data_root}", "data.repeats=32"] if args.data_root else ["data=builtin"]
    ckpt_dir = folder / f"{optim}_{lmbda}"
    overrides = [f"model={args.model}", f"optim={optim}", f"lmbda={lmbda}", *data,
                 f"data.patch_size={args.patch}", f"data.batch_size={args.batch}", f"loop.max_steps={args.steps}",
                 f"loop.eval_every={args.steps}", "loop.ckpt_every=0", "loop.log_every=50", "loop.progress=false",
                 "eval.real_bitstreams=false", "logger=none", f"checkpoint.dir={ckpt_dir}", f"device={args.device}",
                 *extra]
    start = time.perf_counter()
    summary = train(compose("phase1", overrides))
    seconds = time.perf_counter() - start
    test = image_paths("folder", args.data_root, "test") if args.data_root else image_paths("builtin", None, "test")
    point = operating_point(ckpt_dir / "last.pt", test, torch.device(args.device))
    point.update(optim=optim, lmbda=lmbda, train_seconds=seconds, skipped_steps=summary["skipped_steps"])
    print(f"{optim:>9} lambda={lmbda:<8} bpp={point['bpp']:.4f} (estimate {point['bpp_estimate']:.4f}) "
          f"PSNR={point['psnr']:.2f} dB  train {seconds:.0f} s", flush=True)
    return point


def step_time(optim_overrides: list[str], args) -> float:
    """Median seconds per training step over a short run (after warm-up), same model and batch."""
    times = []

    def on_log(step, point):
        times.append(time.perf_counter())

    data = ["data=folder", f"data.root={args.data_root}", "data.repeats=32"] if args.data_root else ["data=builtin"]
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
    p.add_argument("--balanced-lambdas", default="0.0035,0.013,0.0483,0.18,0.5")
    p.add_argument("--data-root", default=None, help="folder with train/ and test/ (default: built-in photos)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/phase1_rd.json"))
    args = p.parse_args()

    result = {"config": vars(args) | {"out": str(args.out)},
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    ratios = {"adam": step_time(["optim=adam"], args),
              "balanced_second_forward": step_time(["optim=balanced"], args),
              "balanced_next_step": step_time(["optim=balanced", "optim.task_weight_update=next_step"], args)}
    result["step_seconds"] = ratios
    result["step_time_ratio_vs_adam"] = {k: v / ratios["adam"] for k, v in ratios.items()}
    print("step time vs Adam:", result["step_time_ratio_vs_adam"], flush=True)

    folder = Path(tempfile.mkdtemp())
    curves = {}
    for optim, lambdas in (("adam", args.adam_lambdas), ("balanced", args.balanced_lambdas)):
        curves[optim] = [run_point(optim, float(l), args, folder, []) for l in lambdas.split(",")]
        result[optim] = curves[optim]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # keep what is done if the run is cut short

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
               title=f"HPCM-{args.model}, {args.steps} steps, held-out photos, real bitstreams")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("adam", "balanced")}, indent=1))


if __name__ == "__main__":
    main()
