"""Phase 1 training through train(cfg): both optimizers on the tiny HPCM, resume, evaluation JSON."""

from __future__ import annotations

import json

import pytest

from common.checkpoint import load_checkpoint
from common.config import compose
from phase1.train import train

FAST = ["model=tiny", "data.patch_size=64", "data.batch_size=2", "data.repeats=1", "loop.log_every=1",
        "loop.progress=false", "eval.max_images=1"]

TRAIN_METRICS = ["train/loss", "train/distortion", "train/bpp_loss", "train/psnr", "train/lr", "train/grad_norm",
                 "train/skipped_steps"]
TEST_METRICS = ["test/loss", "test/distortion", "test/bpp_loss", "test/bpp_real", "test/psnr", "test/ms_ssim"]


@pytest.mark.parametrize("optim", ["adam", "balanced"])
def test_tiny_run_logs_every_metric(optim, tmp_path, mlflow_store):
    import mlflow

    cfg = compose("phase1", [*FAST, f"optim={optim}", "loop.max_steps=3", "loop.eval_every=3",
                             f"checkpoint.dir={tmp_path / 'ckpt'}", f"logger.run_name=test-{optim}"])
    summary = train(cfg)
    assert summary["global_step"] == 3 and summary["skipped_steps"] == 0
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=["phase1"]).iloc[0]
    expected = TRAIN_METRICS + TEST_METRICS
    if optim == "balanced":
        expected += ["train/task_weight_distortion", "train/task_weight_bpp"]
        assert run["metrics.train/task_weight_distortion"] + run["metrics.train/task_weight_bpp"] == pytest.approx(1)
    missing = [m for m in expected if f"metrics.{m}" not in run or run[f"metrics.{m}"] != run[f"metrics.{m}"]]
    assert not missing, f"not logged: {missing}"
    assert run["params.optim.name"] == optim and run["status"] == "FINISHED"
    assert run["tags.git_commit"] and run["tags.command"]  # where the run came from
    from mlflow.tracking import MlflowClient

    assert "config.yaml" in [a.path for a in MlflowClient(mlflow_store).list_artifacts(run["run_id"])]
    assert run["metrics.test/bpp_real"] > 0 and run["metrics.test/bpp_loss"] > 0
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt", kind="phase1")
    assert ckpt["mlflow_run_id"] == run["run_id"]
    if optim == "balanced":
        assert "task_balancing" in ckpt["optimizer_state_dict"]  # the FAMO state travels with the checkpoint


def test_resume_continues_the_same_curve_and_run(tmp_path, mlflow_store):
    import mlflow

    common = [*FAST, "optim=balanced", "loop.max_steps=4", "loop.eval_every=100", "loop.ckpt_every=2",
              "checkpoint.keep_last=5", "eval.real_bitstreams=false"]
    full = train(compose("phase1", [*common, f"checkpoint.dir={tmp_path / 'full'}"]))
    # resume from the step-2 checkpoint of that run, as after a crash at step 3
    resumed = train(compose("phase1", [*common, f"checkpoint.dir={tmp_path / 'again'}",
                                       f"resume={tmp_path / 'full' / 'step_00000002.pt'}"]))
    assert resumed["global_step"] == 4
    a = load_checkpoint(tmp_path / "full" / "last.pt")["history"]
    b = load_checkpoint(tmp_path / "again" / "last.pt")["history"]
    losses_a = [p["train/loss"] for p in a if "train/loss" in p]
    losses_b = [p["train/loss"] for p in b if "train/loss" in p]
    assert len(losses_a) == len(losses_b) == 4
    assert max(abs(x - y) for x, y in zip(losses_a, losses_b)) < 1e-5
    weights_a = [p["train/task_weight_distortion"] for p in a if "train/task_weight_distortion" in p]
    weights_b = [p["train/task_weight_distortion"] for p in b if "train/task_weight_distortion" in p]
    assert weights_a == pytest.approx(weights_b, abs=1e-6)  # FAMO state restored too
    assert full["final/test/loss"] == pytest.approx(resumed["final/test/loss"], rel=1e-5)
    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["phase1"])
    assert len(runs) == 1  # the resumed run continued the same MLflow run


def test_evaluate_json_in_compressai_format(tmp_path):
    from phase1.evaluate import main

    train(compose("phase1", [*FAST, "logger=none", "loop.max_steps=1", "loop.eval_every=100",
                             "eval.real_bitstreams=false", f"checkpoint.dir={tmp_path / 'ckpt'}"]))
    out = tmp_path / "rd.json"
    assert main([str(tmp_path / "ckpt" / "last.pt"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"name", "description", "results", "points"}
    for key in ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"):
        assert len(result["results"][key]) == 1
    point = result["points"][0]
    assert len(point["bpp_per_image"]) == 3 and point["bpp"] > 0  # the three held-out photos, real bytes
    assert main([str(tmp_path / "missing.pt")]) == 2
