"""Experiment tracking behind one small `Logger` protocol, and `Store` for reading and annotating runs
afterwards (sweeps, reports). The only module that imports mlflow.

Measured costs on a SQLite store shape this module: one `log_metric` call costs 15-23 ms while `log_batch` of
1,000 metrics costs 0.1 s, so metrics are buffered and flushed in batches; `import mlflow` takes seconds, so
it is imported lazily (never at CLI start-up or test collection); creating a new store runs schema migrations
(~8 s) that race when several processes do it at once, so `ensure_store` creates it under a file lock.

The default store is MLflow's own default file name, `mlflow.db`, pinned to the repository root (not the
working directory) with artifacts in `mlartifacts/` beside it, so a plain `mlflow ui` in the repo finds it.
`MLFLOW_TRACKING_URI` points everything at another store or a tracking server.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from common import REPO_ROOT

# A run that cannot reach its store keeps this many metric points before dropping the oldest.
MAX_BUFFERED_METRICS = 200_000


# A tracking server that does not answer at the start of a run fails it within this many seconds, instead of
# MLflow's own retries (minutes) ending in a traceback, having trained nothing.
SERVER_CHECK_SECONDS = 5.0


class TrackingUnavailableError(ConnectionError):
    """The tracking store cannot be reached when a run starts; one line naming the URI and the way out."""


KNOWN_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store (sqlite:///<path>), or None for any other kind of store."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def check_reachable(tracking_uri: str) -> None:
    """Ask an http(s) tracking server for its health page; check that a local SQLite store is one and is
    writable. Either fails in one line naming the store (MLflow's own errors are long SQL tracebacks)."""
    import urllib.error
    import urllib.request

    database = sqlite_file(tracking_uri)
    if database is not None:
        _check_sqlite_store(database)
        return
    scheme = tracking_uri.partition("://")[0].split("+")[0] if "://" in tracking_uri else "file"
    if scheme not in KNOWN_SCHEMES:
        raise TrackingUnavailableError(
            f"tracking URI {tracking_uri} has an unknown scheme {scheme!r}: use sqlite:///<file>, http(s)://<server>, "
            "postgresql://..., a folder, or train without tracking (logger=none)"
        )
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=SERVER_CHECK_SECONDS) as reply:
            reply.read(16)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise TrackingUnavailableError(
            f"tracking server {tracking_uri} is unreachable ({reason}): start it (make mlflow-server), point "
            "MLFLOW_TRACKING_URI at a running one, or train without tracking (logger=none)"
        ) from None


def _check_sqlite_store(path: Path) -> None:
    from common.sqlite_lock import sqlite_file_problem

    way_out = "point MLFLOW_TRACKING_URI at another store, or train without tracking (logger=none)"
    problem = sqlite_file_problem(path)
    if problem:
        raise TrackingUnavailableError(f"tracking store {path} {problem}: move it aside or {way_out}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise TrackingUnavailableError(f"tracking store {path} is read-only: {way_out}")
    elif not os.access(_existing_parent(path.parent), os.W_OK):
        raise TrackingUnavailableError(f"tracking store {path} cannot be created (read-only folder): {way_out}")


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store live in `mlartifacts/` beside the database file; a server decides
    for itself (None)."""
    database = sqlite_file(tracking_uri)
    return None if database is None else (database.resolve().parent / "mlartifacts").as_uri()


@runtime_checkable
class Logger(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger:
    """Logs nothing; for `logger=none`, tests, and ranks other than 0."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass

    def flush(self):
        pass

    def close(self, status="FINISHED"):
        pass


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-4}} -> {"optim.lr": 1e-4}; lists become their string form."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def git_state(cwd: Path = REPO_ROOT) -> dict[str, str]:
    """Commit and dirty flag of the code that runs (empty strings outside a git checkout)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else ""
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower() if commit else ""}


def ensure_store(tracking_uri: str | None = None) -> str:
    """Create (migrate) the store once, under a lock, before any parallel use. Returns the URI."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        check_reachable(uri)
        from mlflow.tracking import MlflowClient

        from common.sqlite_lock import creation_lock

        with creation_lock(uri):
            MlflowClient(uri).search_experiments(max_results=1)
    return uri


def redacted(uri: str) -> str:
    """A store's URI fit to print or commit: a password in it (postgresql://user:secret@host/db) becomes ***."""
    return re.sub(r"(//[^/:@]+:)[^@/]+@", r"\1***@", uri)


def ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A page of the MLflow UI at `base` (http://host:port). MLflow 3 shows experiments in its GenAI workflow
    unless the browser chose "Model training" once; the workflowType parameter opens the training view."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


# The kind MLflow's UI records when a user marks an experiment as model training. MLflow 3.18's UI decides the
# page by its GenAI / Model training switch rather than by this tag, so the links we print set the switch too.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if not EXPERIMENT_KIND.items() <= experiment.tags.items():  # made before the kind was set, or by others
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    # A local SQLite store keeps artifacts beside it (not in the working directory of whoever ran first).
    root = artifact_root_for(tracking_uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class MLflowLogger:
    """Logger for one MLflow run (new, resumed by `run_id`, or nested under `parent_run_id`).

    `log_metrics` only appends to a buffer; a background thread writes it with `log_batch` once
    `flush_every` points are waiting or every `flush_seconds`, so the training thread never waits on the
    store. If the store is unreachable or locked, the points stay buffered, a warning is printed once, and the
    next flush retries: training never stops because of tracking. `flush()` and `close()` write synchronously."""

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_every: int = 1000,
        flush_seconds: float = 30.0,
        system_metrics: bool = False,
    ):
        import threading

        from mlflow.tracking import MlflowClient

        check_reachable(tracking_uri or default_tracking_uri())
        self.tracking_uri = ensure_store(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.flush_every = min(flush_every, 1000)  # log_batch takes at most 1,000 metrics
        self.flush_seconds = flush_seconds
        self._buffer: list = []
        self._buffer_lock = threading.Lock()  # guards _buffer
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._wake = threading.Event()
        self._closed = False
        self._warned = False
        self.resumed = run_id is not None
        if run_id is None:
            experiment_id = get_or_create_experiment(self.client, experiment, self.tracking_uri)
            run_tags = {"mlflow.user": getpass.getuser(), **run_context_tags()}
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run_tags.update({k: str(v) for k, v in (tags or {}).items()})
            run = self.client.create_run(experiment_id, run_name=run_name, tags=run_tags)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "resumed_by", shlex.join(sys.argv))
            for key, value in (tags or {}).items():  # who resumed it, e.g. the sweep trial that retries it
                self.client.set_tag(run_id, key, str(value))
        self.run_id = run_id
        self.experiment_id = experiment_id if not self.resumed else self.client.get_run(run_id).info.experiment_id
        self._writer = threading.Thread(target=self._write_in_background, name="mlflow-writer", daemon=True)
        self._writer.start()
        self._system = self._watch_system() if system_metrics else None

    def _watch_system(self):
        """MLflow's own sampler of CPU, memory, disk, network and (with nvidia-ml-py) GPU use, as system/* metrics
        of this run every 10 s, continuing its steps on a resumed run."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.tracking_uri, resume_logging=self.resumed)
        monitor.start()
        return monitor

    # -------------------------------------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if self.resumed:
            return  # MLflow params are immutable; a resumed run already holds them
        items = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        with self._buffer_lock:
            self._buffer.extend(points)
            if len(self._buffer) > MAX_BUFFERED_METRICS:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED_METRICS]
            waiting = len(self._buffer)
        if waiting >= self.flush_every:
            self._wake.set()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], filename: str) -> None:
        """Store a dict as a JSON/YAML artifact (by the file name's extension)."""
        self.client.log_dict(self.run_id, dict(data), filename)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def flush(self) -> bool:
        """Write every buffered point now; False when the store could not take them (they stay buffered)."""
        with self._write_lock:
            while True:
                with self._buffer_lock:
                    chunk = self._buffer[:1000]
                if not chunk:
                    return True
                try:
                    self.client.log_batch(self.run_id, metrics=chunk)
                except Exception as err:  # store down or locked: keep the points, say so once, retry later
                    self._warn_unavailable(err)
                    return False
                with self._buffer_lock:
                    del self._buffer[: len(chunk)]
                if self._warned:
                    print(
                        f"MLflow store {self.tracking_uri} is reachable again; buffered metrics written",
                        file=sys.stderr,
                    )
                    self._warned = False

    def _warn_unavailable(self, err: Exception) -> None:
        if self._warned:
            return
        first_line = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(
            f"MLflow store {self.tracking_uri} is unavailable ({type(err).__name__}: {first_line}); "
            "metrics are buffered and will be written when it is back",
            RuntimeWarning,
            stacklevel=3,
        )
        self._warned = True

    def _write_in_background(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=self.flush_seconds)
            self._wake.clear()
            if not self._closed:
                self.flush()

    def close(self, status: str = "FINISHED") -> None:
        if self._system is not None:
            self._system.finish()
        self._closed = True
        self._wake.set()
        self._writer.join()
        if not self.flush():
            with self._buffer_lock:
                lost = len(self._buffer)
            warnings.warn(f"{lost} metric points could not be written to {self.tracking_uri}", stacklevel=2)
            return
        self.client.set_terminated(self.run_id, status=status)


def run_context_tags() -> dict[str, str]:
    """Where a run came from: git commit and dirty flag, the command line, the host, and the SLURM job (whose
    log holds what the run printed)."""
    tags = {**git_state(), "command": shlex.join(sys.argv), "host": socket.gethostname()}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        tags["slurm_job_id"] = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{array_task}" if array_task else job
    return tags


def gpu_sampler_installed() -> bool:
    """MLflow samples GPU utilisation and memory through nvidia-ml-py (`import pynvml`)."""
    import importlib.util

    return importlib.util.find_spec("pynvml") is not None


def wants_system_metrics(setting: Any, device_type: str) -> bool:
    """`logger.system_metrics`: true, false, or auto (on for a CUDA run when MLflow can sample the GPU)."""
    if setting == "auto":
        return device_type == "cuda" and gpu_sampler_installed()
    if not isinstance(setting, bool):
        raise ValueError(f"logger.system_metrics={setting!r} is not one of: auto, true, false")
    return setting


def create_logger(
    cfg: Mapping[str, Any] | None, run_id: str | None = None, is_main: bool = True, device_type: str = "cpu"
) -> Logger:
    """Logger from the `logger` config group: `backend: mlflow` or `backend: none`.

    Ranks other than 0 always get a NullLogger, so a distributed run is one MLflow run. `device_type` is the
    run's device ("cuda", "cpu"), for `logger.system_metrics: auto`."""
    if cfg is None or not is_main or cfg.get("backend", "none") == "none":
        return NullLogger()
    if cfg["backend"] != "mlflow":
        raise ValueError(f"logger.backend={cfg['backend']!r} is not one of: mlflow, none")
    return MLflowLogger(
        experiment=cfg["experiment"],
        run_name=cfg.get("run_name"),
        tracking_uri=cfg.get("tracking_uri"),
        run_id=run_id,
        parent_run_id=cfg.get("parent_run_id"),
        tags=cfg.get("tags"),
        flush_every=cfg.get("flush_every", 1000),
        flush_seconds=cfg.get("flush_seconds", 30.0),
        system_metrics=wants_system_metrics(cfg.get("system_metrics", "auto"), device_type),
    )


class Store:
    """The runs already in a store, for code that reads or annotates them after training: the sweep's parent
    run and trial tags, reports. Training itself logs through `create_logger`."""

    def __init__(self, tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        check_reachable(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri)

    def experiment_names(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    def run_ids(self, experiment: str, filter_string: str = "") -> list[str]:
        ids = [e.experiment_id for e in self.client.search_experiments() if e.name == experiment]
        return [r.info.run_id for r in self.client.search_runs(ids, filter_string=filter_string)] if ids else []

    def runs_frame(self, experiments: list[str], filter_string: str = ""):
        """One row per run (params., metrics., tags. columns) as pandas, like mlflow.search_runs."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.search_runs(experiment_names=experiments, filter_string=filter_string)

    def run_record(self, run_id: str) -> dict[str, Any]:
        """One run as plain data: its experiment, status, tags (mlflow.* left out) and latest metric values."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise ValueError(f"run {run_id} is not in the MLflow store {redacted(self.tracking_uri)}") from None
        experiment = self.client.get_experiment(run.info.experiment_id)
        return {
            "run_id": run_id,
            "experiment": experiment.name,
            "status": run.info.status,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": dict(run.data.metrics),
        }

    def artifact_text(self, run_id: str, name: str) -> str | None:
        """A text artifact at the top of a run's artifacts (sample.txt, test_images.json), or None without one."""
        import tempfile

        if name not in {a.path for a in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as folder:
            return Path(self.client.download_artifacts(run_id, name, folder)).read_text()

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every point of one metric, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING reopens a run; FINISHED, FAILED or KILLED ends it."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)
