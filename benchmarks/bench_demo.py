"""`make demo` as a new user meets it: a fresh clone, `make install`, `make demo`, timed apart, and what it found.

Clones the committed HEAD into a temporary folder (no venv, no MLflow store, no outputs), times `make install`
and `make demo` there, then reads the clone's MLflow store and study the way the report does: the demo's R-D
points, Balanced's BD-rate against Adam, the Phase 2 test bits/byte and the sweep's best trial.

    python benchmarks/bench_demo.py --out benchmarks/results/demo.json     # ~9 min on 2 CPU cores, idle
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def timed_make(target: str, clone: Path, log: Path) -> float:
    """Seconds `make <target>` took in the clone; its output goes to `log`, and a failure ends the benchmark."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["make", target], cwd=clone, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: make {target} failed with exit status {done.returncode} in {clone}: see {log}")
    return seconds


def findings(clone: Path) -> dict:
    """The demo's numbers, read from the clone's MLflow store and study by the report's own functions."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import optuna

    from reports.build import comparison, load_runs, rd_sets

    runs = load_runs()
    out: dict = {"rd_sets": {}}
    for name, rd_set in rd_sets(runs).items():
        curves = {
            optim: [{k: p[k] for k in ("lmbda", "bpp", "psnr", "run_id")} for p in points]
            for optim, points in rd_set.curves.items()
        }
        out["rd_sets"][name] = {"curves": curves, "comparison": comparison(rd_set)}
    lm = runs[(runs.get("tags.phase") == "phase2") & runs.get("tags.optuna_study").isna()]
    latest = lm.sort_values("end_time").iloc[-1]
    out["phase2"] = {
        "run_id": latest["run_id"],
        "test_bits_per_byte": latest["metrics.test/bits_per_byte"],
        "val_bits_per_byte": latest["metrics.val/bits_per_byte"],
    }
    journal = clone / "sweeps" / "balanced_gamma_wlr.journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="balanced_gamma_wlr", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    out["sweep"] = {"complete_trials": len(done), "best_value": study.best_value, "best_params": study.best_params}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo.json")
    args = parser.parse_args()
    if git("status", "--porcelain", "--untracked-files=no"):
        print("note: the working tree has uncommitted changes; the clone measures the committed HEAD", flush=True)
    with tempfile.TemporaryDirectory(prefix="demo-clone-") as folder:
        clone, logs = Path(folder) / "repo", Path(folder)
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        print(f"fresh clone of {git('rev-parse', '--short', 'HEAD')} in {clone}; make install ...", flush=True)
        install_s = timed_make("install", clone, logs / "install.log")
        print(f"make install: {install_s:.0f} s; make demo ...", flush=True)
        demo_s = timed_make("demo", clone, logs / "demo.log")
        print(f"make demo: {demo_s:.0f} s", flush=True)
        result = {
            "commit": git("rev-parse", "HEAD"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "install_seconds": round(install_s, 1),
            "demo_seconds": round(demo_s, 1),
            **findings(clone),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
