"""Phase 2 training through train(cfg) on the built-in corpus: learning, logged metrics, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from phase2.train import train

FAST = [
    "model=debug",
    "seq_len=32",
    "batch_size=8",
    "eval.max_batches=4",
    "loop.progress=false",
    "loop.log_every=5",
    "optim.lr=3e-3",
    "schedule.warmup_steps=0",
]


@pytest.mark.slow
def test_debug_run_learns_and_logs_every_metric(tmp_path, mlflow_store):
    import mlflow

    summary = train(
        compose(
            "phase2",
            [
                *FAST,
                "seq_len=64",
                "loop.max_steps=60",
                "loop.eval_every=30",
                "diagnostics_every=10",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
            ],
        )
    )
    history = load_checkpoint(tmp_path / "ckpt" / "last.pt", kind="phase2")["history"]
    val = [p["val/loss"] for p in history if "val/loss" in p]
    assert len(val) == 2 and val[-1] < 5.0  # a byte model that learned nothing sits at ln(256) = 5.55
    first_train = next(p["train/loss"] for p in history if "train/loss" in p)
    assert summary["final/val/loss"] < first_train - 0.5
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=["phase2"]).iloc[0]
    for key in (
        "train/loss",
        "train/perplexity",
        "val/loss",
        "val/perplexity",
        "val/bits_per_byte",
        "test/bits_per_byte",
        "train/lr",
        "train/items_per_s",
        "train/diag/gamma_mean",
        "train/diag/snr_mean",
        "train/diag/lyapunov_stable_ratio",
        "train/diag/fast_weight_energy",
    ):
        assert f"metrics.{key}" in run and run[f"metrics.{key}"] == run[f"metrics.{key}"], key
    assert run["tags.tokenizer"] == "bytes"
    record = json.loads((Path(run["tags.run_dir"]) / "training_history.json").read_text())
    assert record["val_losses"] == val and len(record["gamma_history"]) > 0
    # the final weights continue the prompt: kept in the run folder and in the MLflow run
    from mlflow.tracking import MlflowClient

    sample = (Path(run["tags.run_dir"]) / "sample.txt").read_text()
    assert sample.startswith("The ") and len(sample) > len("The \n")
    assert "sample.txt" in [a.path for a in MlflowClient(mlflow_store).list_artifacts(run["run_id"])]


def test_resume_continues_the_same_curve(tmp_path):
    common = [
        *FAST,
        "logger=none",
        "model=transformer",
        "loop.max_steps=6",
        "loop.log_every=1",
        "loop.eval_every=100",
        "loop.ckpt_every=3",
        "checkpoint.keep_last=5",
    ]
    train(compose("phase2", [*common, f"checkpoint.dir={tmp_path / 'full'}"]))
    train(
        compose(
            "phase2",
            [*common, f"checkpoint.dir={tmp_path / 'again'}", f"resume={tmp_path / 'full' / 'step_00000003.pt'}"],
        )
    )
    a = [p["train/loss"] for p in load_checkpoint(tmp_path / "full" / "last.pt")["history"] if "train/loss" in p]
    b = [p["train/loss"] for p in load_checkpoint(tmp_path / "again" / "last.pt")["history"] if "train/loss" in p]
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    ckpt = load_checkpoint(tmp_path / "again" / "last.pt", kind="phase2")
    assert json.loads(ckpt["tokenizer_json"])["kind"] == "bytes"  # the checkpoint carries its tokenizer


def test_a_test_split_shorter_than_a_window_gives_no_test_numbers(capsys):
    import torch

    from phase2.train import _eval_windows

    windows = _eval_windows({"val": torch.arange(100), "test": torch.arange(10)}, 32)
    assert set(windows) == {"val"}
    assert "the test split has 10 tokens, fewer than one window of seq_len=32" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.prompt=''", "sample.prompt is empty"),
        ("sample.temperature=0", "sample.temperature=0 must be a finite number > 0"),
    ],
)
def test_a_bad_sample_setting_is_refused_before_training(override, message, tmp_path):
    from phase2.train import build_parts

    cfg = compose("phase2", [*FAST, "logger=none", override, f"checkpoint.dir={tmp_path}"])
    with pytest.raises(ValueError, match=message):
        build_parts(cfg, torch.device("cpu"), None)
