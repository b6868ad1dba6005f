"""A file lock beside a SQLite database, held while it is created. Two processes creating a new store at once
(MLflow's or Optuna's) both write its schema version, and one of them fails (UNIQUE constraint failed)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def creation_lock(sqlite_url: str) -> Iterator[None]:
    """Hold `<database>.lock` (created beside the database, with its folder) for the duration."""
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
