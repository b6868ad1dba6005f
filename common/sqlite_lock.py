"""SQLite files: what is wrong with one, and file locks beside it. `creation_lock` is held while a SQLite
store is created: two processes creating a new store at once (MLflow's or Optuna's) both write its schema
version, and one of them fails (UNIQUE constraint failed). `sole_user` is held by the one process that may
use a file for its lifetime."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file_problem(path: Path) -> str | None:
    """Why `path` cannot be an SQLite database (a folder, another kind of file), or None. A missing or empty
    file is a database still to be created."""
    if path.is_dir():
        return "is a folder, not an SQLite file"
    if path.is_file():
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            return "is not an SQLite database (corrupted?)"
    return None


@contextmanager
def creation_lock(sqlite_url: str) -> Iterator[None]:
    """Hold `<database>.lock` (created beside the database, with its folder) for the duration."""
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def sole_user(path: Path, busy: str) -> Iterator[None]:
    """Hold `<path>.owner.lock` for the duration, or raise UserError(`busy` + who holds it) at once.

    The lock goes with the process, so a killed owner leaves nothing to clean up."""
    from common.config import UserError

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".owner.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"{busy} ({lock.read().strip() or 'another process'})") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        yield
