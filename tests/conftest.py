"""Shared fixtures. The MLflow store fixture copies a store migrated once per test session: a new SQLite
store costs ~8 s of schema migrations, a copy costs milliseconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.servers import apt_install, free_port, skip_unless_ci

# Tests never write to the user's store or open windows.
os.environ.setdefault("MPLBACKEND", "Agg")
# One math thread per test process: pytest-xdist already runs one worker per core, and OpenMP threads of
# several processes on the same cores spin against each other (steps measured 10-100x slower that way).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def _migrated_store_template(tmp_path_factory, worker_id) -> str:
    import fcntl

    # One template for all xdist workers: the first worker migrates it under a lock, the others wait.
    root = tmp_path_factory.getbasetemp().parent if worker_id != "master" else tmp_path_factory.getbasetemp()
    template = root / "mlflow_template.db"
    with open(root / "mlflow_template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            from mlflow.tracking import MlflowClient

            building = root / "mlflow_template.building.db"
            MlflowClient(f"sqlite:///{building}").search_experiments(max_results=1)
            building.rename(template)
    return str(template)


@pytest.fixture
def mlflow_store(tmp_path, _migrated_store_template, monkeypatch) -> str:
    """A fresh, migrated SQLite MLflow store in tmp_path; MLFLOW_TRACKING_URI points at it."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_migrated_store_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def postgres_server():
    """A PostgreSQL server on loopback: (url, data folder)."""
    from common import postgres

    # Under root the server runs as `postgres`, which must reach its folder: a folder of its own in /tmp (under
    # pytest's temporary root, `pg_ctl stop` at teardown was refused the folder: permission denied).
    parent = Path(tempfile.mkdtemp(prefix="research-pg-"))
    parent.chmod(0o755)
    folder = parent / "data"
    try:
        try:
            postgres._bin("pg_ctl")
        except FileNotFoundError:
            apt_install("postgresql")
        url = postgres.start(folder, free_port())
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        shutil.rmtree(parent, ignore_errors=True)
        skip_unless_ci("PostgreSQL server", err)
    yield url, folder
    postgres.stop(folder)
    shutil.rmtree(parent, ignore_errors=True)
