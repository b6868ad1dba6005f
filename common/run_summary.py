"""The few lines a training command prints when it ends: the final numbers by split, and where the run is.

    finished at step 2000 (0 skipped)
      val    loss 1.234   psnr 29.87   bpp_real 0.4521   ms_ssim 0.9712
      test   loss 1.301   psnr 29.51   bpp_real 0.4688   ms_ssim 0.9698   images 3
      folder      outputs/phase1/2026-12-04_21-30-00_123456_a1b2c3
      checkpoints outputs/phase1/.../checkpoints (best.pt: val/loss 1.234)
      mlflow      run 3f2a... in sqlite:///mlflow.db: make mlflow-ui, then http://127.0.0.1:5000/#/...

train(cfg) still returns the whole summary; these lines are for the person at the terminal.
"""

from __future__ import annotations

import math
from typing import Any

from common.tracking import redacted, ui_link

LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves a local store


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def metric_lines(summary: dict[str, Any]) -> list[str]:
    """One line per split (val, test, ...): its final metrics in the order the run reported them."""
    splits: dict[str, list[str]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "final" and isinstance(value, (int, float)):
            splits.setdefault(parts[1], []).append(f"{parts[2]} {_number(float(value))}")
    return [f"  {split:<6} " + "   ".join(items) for split, items in splits.items()]


def where_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary.get("run_dir"):
        lines.append(f"  {'folder':<11} {summary['run_dir']}")
    if summary.get("checkpoint_dir"):
        best = summary.get("best_val_loss")
        note = f" (best.pt: {_number(best)} on validation)" if isinstance(best, float) and math.isfinite(best) else ""
        lines.append(f"  {'checkpoints':<11} {summary['checkpoint_dir']}{note}")
    if summary.get("mlflow_run_id"):
        uri = summary.get("tracking_uri") or ""
        server = redacted(uri) if uri.startswith(("http://", "https://")) else None
        link = ui_link(server or LOCAL_UI, summary["mlflow_experiment_id"], summary["mlflow_run_id"])
        how = f"{link}" if server else f"make mlflow-ui, then {link}"
        lines.append(f"  {'mlflow':<11} run {summary['mlflow_run_id']} in {redacted(uri)}: {how}")
    return lines


def closing_lines(summary: dict[str, Any]) -> list[str]:
    step, skipped = int(summary.get("global_step", 0)), int(summary.get("skipped_steps", 0))
    state = "stopped" if summary.get("interrupted") else "finished"
    return [f"{state} at step {step} ({skipped} skipped)", *metric_lines(summary), *where_lines(summary)]
