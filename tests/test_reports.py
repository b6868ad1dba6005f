"""Reports built from MLflow runs: numbers in the report equal those computed directly from the runs."""

from __future__ import annotations

import re

import pytest

from common.tracking import MLflowLogger
from phase1 import rd
from reports.build import build

# Four lambdas per optimizer; Balanced needs ~10 % fewer bits at each quality level.
ADAM = [(0.0035, 0.20, 28.0), (0.0067, 0.33, 30.1), (0.013, 0.52, 32.0), (0.025, 0.80, 33.9)]


def _log_rd_run(optim: str, lmbda: float, bpp: float, psnr: float) -> str:
    logger = MLflowLogger("phase1", run_name=f"{optim}-{lmbda}", tags={"phase": "phase1"})
    logger.log_params({"optim": {"name": optim}, "lmbda": lmbda, "loop": {"max_steps": 100}})
    logger.log_metrics({"test/bpp_real": bpp, "test/psnr": psnr, "test/bpp_loss": bpp * 0.98}, step=100)
    if optim == "balanced":
        for step in (10, 50, 100):
            logger.log_metrics({"train/task_weight_distortion": 0.5 + step / 1000}, step=step)
    logger.close()
    return logger.run_id


def test_empty_store_says_so(mlflow_store, tmp_path):
    text = build(out_root=tmp_path).read_text()
    assert "holds no runs" in text


def test_rd_report_matches_direct_computation(mlflow_store, tmp_path):
    import mlflow

    ids = [_log_rd_run("adam", l, b, p) for l, b, p in ADAM]
    ids += [_log_rd_run("balanced", l, 0.9 * b, p) for l, b, p in ADAM]
    report = build(experiment="phase1", out_root=tmp_path)
    text = report.read_text()
    html = report.with_suffix(".html").read_text()

    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["phase1"])
    curves = {o: [{"bpp": r["metrics.test/bpp_real"], "psnr": r["metrics.test/psnr"]}
                  for _, r in runs[runs["params.optim.name"] == o].iterrows()] for o in ("adam", "balanced")}
    expected = rd.bd_rate(curves["adam"], curves["balanced"])
    assert expected == pytest.approx(-10.0, abs=1e-6)
    row = next(line for line in text.splitlines() if line.startswith("| adam | balanced |"))
    assert float(row.split("|")[3]) == pytest.approx(expected, abs=1e-3)
    for run_id in ids:  # every number names the run it came from
        assert run_id[:8] in text
    for png in ("rd_curves.png", "task_weights.png"):
        assert (report.parent / png).stat().st_size > 5000 and png in html


def test_study_section_reports_the_best_trial(mlflow_store, tmp_path):
    parent = MLflowLogger("phase1", run_name="study:s", tags={"kind": "study", "optuna_study": "s"})
    losses = [3.0, 1.5, 2.0]
    for number, loss in enumerate(losses):
        child = MLflowLogger("phase1", run_name=f"s-trial-{number}", parent_run_id=parent.run_id,
                             tags={"optuna_study": "s", "optuna_trial": number, "optuna_state": "COMPLETE"})
        child.log_params({"optim": {"gamma": 0.001 * (number + 1)}})
        child.log_metrics({"test/loss": loss}, step=1)
        child.close()
    parent.client.log_metric(parent.run_id, "study/best_value", min(losses))
    parent.client.set_tag(parent.run_id, "best_trial", losses.index(min(losses)))
    parent.close()
    text = build(study="s", out_root=tmp_path, storage=f"sqlite:///{tmp_path / 'none.db'}").read_text()
    assert re.search(r"best trial 1 with objective 1\.5\b", text)
    assert parent.run_id in text
