"""MLflowLogger against a real (temporary) SQLite store, read back through mlflow.search_runs."""

import warnings

import pytest

from common.tracking import MLflowLogger, NullLogger, create_logger, flatten


def _runs(uri, experiment):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_logger_writes_params_metrics_artifacts(mlflow_store, tmp_path):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger("unit", run_name="r1", tags={"phase": "test"})
    logger.log_params({"optim": {"lr": 1e-4, "name": "adam"}, "seed": 3})
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "train/bpp": 0.5}, step=step)
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    logger.log_artifact(artifact)
    logger.close()

    runs = _runs(mlflow_store, "unit")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["params.optim.lr"] == "0.0001" and row["params.seed"] == "3"
    assert row["metrics.train/loss"] == pytest.approx(0.2)  # the last value
    assert row["tags.phase"] == "test" and row["status"] == "FINISHED"
    assert row["tags.command"] and "tags.git_commit" in runs.columns
    client = MlflowClient(mlflow_store)
    history = client.get_metric_history(logger.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["note.txt"]
    assert list((tmp_path / "mlartifacts").rglob("note.txt")), "artifacts live beside the store"


def test_background_writer_flushes_full_buffers(mlflow_store):
    import time

    from mlflow.tracking import MlflowClient

    logger = MLflowLogger("unit", flush_every=10, flush_seconds=3600)
    for step in range(10):
        logger.log_metrics({"a": float(step)}, step=step)
    client = MlflowClient(mlflow_store)
    deadline = time.monotonic() + 20
    while len(client.get_metric_history(logger.run_id, "a")) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.get_metric_history(logger.run_id, "a")) == 10  # written without flush()/close()
    logger.close()


def test_metrics_are_buffered_until_flush(mlflow_store):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger("unit", flush_every=1000, flush_seconds=3600)
    logger.log_metrics({"a": 1.0}, step=0)
    client = MlflowClient(mlflow_store)
    assert client.get_metric_history(logger.run_id, "a") == []  # not written yet: one batch later
    logger.flush()
    assert len(client.get_metric_history(logger.run_id, "a")) == 1
    logger.close()


def test_store_unavailable_keeps_metrics_and_warns(mlflow_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger("unit", flush_every=1000, flush_seconds=3600)
    real = logger.client.log_batch

    def down(*a, **k):
        raise ConnectionError("database is locked")

    monkeypatch.setattr(logger.client, "log_batch", down)
    logger.log_metrics({"a": 1.0}, step=0)
    with pytest.warns(RuntimeWarning, match="metrics are buffered"):
        assert logger.flush() is False
    logger.log_metrics({"a": 2.0}, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per flush
        assert logger.flush() is False
    monkeypatch.setattr(logger.client, "log_batch", real)
    logger.close()
    values = [m.value for m in MlflowClient(mlflow_store).get_metric_history(logger.run_id, "a")]
    assert sorted(values) == [1.0, 2.0]


def test_resume_reopens_the_same_run(mlflow_store):
    first = MLflowLogger("unit")
    first.log_params({"lr": 1})
    first.log_metrics({"x": 1.0}, step=1)
    first.close(status="KILLED")
    again = MLflowLogger("unit", run_id=first.run_id)
    again.log_params({"lr": 1})  # params are immutable in MLflow: a resumed run must not fail here
    again.log_metrics({"x": 2.0}, step=2)
    again.close()
    runs = _runs(mlflow_store, "unit")
    assert len(runs) == 1 and runs.iloc[0]["metrics.x"] == 2.0


def test_nested_run_has_parent(mlflow_store):
    parent = MLflowLogger("unit", run_name="study")
    child = MLflowLogger("unit", run_name="trial-0", parent_run_id=parent.run_id)
    child.close()
    parent.close()
    runs = _runs(mlflow_store, "unit")
    child_row = runs[runs["tags.mlflow.runName"] == "trial-0"].iloc[0]
    assert child_row["tags.mlflow.parentRunId"] == parent.run_id


def test_create_logger_by_config(mlflow_store):
    assert isinstance(create_logger({"backend": "none"}), NullLogger)
    assert isinstance(create_logger({"backend": "mlflow", "experiment": "x"}, is_main=False), NullLogger)
    with pytest.raises(ValueError, match="logger.backend='wandb'"):
        create_logger({"backend": "wandb", "experiment": "x"})


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_mlflow_is_not_imported_at_import_time():
    import subprocess
    import sys

    code = "import common.tracking, common.loop, common.checkpoint, sys; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_tracking_server_down_at_start_fails_fast_with_one_line(tmp_path):
    """Nothing listens on port 9: the run stops within seconds, exit 2, one line naming the URI."""
    import os
    import subprocess
    import sys
    import time

    from common import REPO_ROOT

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)  # MLflow's own retries: what a user has
    args = ["model=debug", "seq_len=32", "batch_size=2", "loop.max_steps=2", f"paths.output_root={tmp_path}"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "phase2.train", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "http://127.0.0.1:9" in errors[0] and "logger=none" in errors[0]
    assert time.monotonic() - start < 60  # the import of torch included; the check itself gives up after 5 s


def test_system_metrics_are_sampled_into_the_run_when_asked(mlflow_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow samples every 10 s by default
    logger = create_logger({"backend": "mlflow", "experiment": "unit", "system_metrics": True})
    import time

    time.sleep(3)
    logger.close()
    history = MlflowClient(mlflow_store).get_metric_history(logger.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 1 and all(0 <= m.value <= 100 for m in history)


def test_system_metrics_auto_is_on_for_cuda_runs_that_can_sample_the_gpu(monkeypatch):
    from common import tracking

    monkeypatch.setattr(tracking, "gpu_sampler_installed", lambda: True)
    assert tracking.wants_system_metrics("auto", "cuda") and not tracking.wants_system_metrics("auto", "cpu")
    assert tracking.wants_system_metrics(True, "cpu") and not tracking.wants_system_metrics(False, "cuda")
    monkeypatch.setattr(tracking, "gpu_sampler_installed", lambda: False)
    assert not tracking.wants_system_metrics("auto", "cuda")  # without nvidia-ml-py MLflow sees no GPU
    with pytest.raises(ValueError, match="logger.system_metrics='sometimes' is not one of: auto, true, false"):
        tracking.wants_system_metrics("sometimes", "cuda")


@pytest.mark.gpu
@pytest.mark.slow
def test_a_cuda_training_run_logs_gpu_use_and_memory_by_default(mlflow_store, monkeypatch, tmp_path):
    """`logger.system_metrics: auto` on a CUDA run: MLflow samples the GPU (nvidia-ml-py) into system/gpu_0_*."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from mlflow.tracking import MlflowClient

    from common.config import compose
    from phase2.train import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow samples every 10 s by default
    overrides = ["model=debug", "device=cuda", "loop.max_steps=1500", "loop.eval_every=0", "loop.progress=false"]
    summary = train(compose("phase2", [*overrides, f"paths.output_root={tmp_path}", "logger.experiment=gpu-metrics"]))
    client = MlflowClient(mlflow_store)
    for name in ("system/gpu_0_utilization_percentage", "system/gpu_0_memory_usage_megabytes"):
        history = client.get_metric_history(summary["mlflow_run_id"], name)
        assert history and all(m.value >= 0 for m in history), name
