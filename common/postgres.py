"""A PostgreSQL server of one's own on loopback, for Optuna studies shared by many workers and for an MLflow
tracking server's backend store (`make mlflow-server`), from the Debian `postgresql` package.

    python -m common.postgres start --dir .pgdata --port 5433     # prints postgresql://...:5433/research
    python -m common.postgres start --dir .pgdata --database mlflow   # another database, same server
    python -m common.postgres stop --dir .pgdata

A cluster is created on first start (initdb, trust authentication on 127.0.0.1 only). Under root the server
runs as the `postgres` user, since PostgreSQL refuses to run as root. Teams point workers at a real server
instead: `make sweep-balanced STORAGE=postgresql://user:pass@host/db`.
"""

from __future__ import annotations

import argparse
import getpass
import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATABASE = "research"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise FileNotFoundError(
            f"PostgreSQL's {name} was not found: install the server (Debian: "
            "apt-get install postgresql) or pass a storage URL of an existing server"
        )
    return found


def _as_owner(cmd: list[str], data_dir: Path) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    shutil.chown(data_dir, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _user() -> str:
    return "postgres" if os.geteuid() == 0 else getpass.getuser()


def url(port: int, database: str = DATABASE) -> str:
    return f"postgresql://{_user()}@127.0.0.1:{port}/{database}"


def _query(port: int, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", _user(), "-d", "postgres", "-tAc", sql],
        capture_output=True,
        text=True,
    )


def start(data_dir: str | Path, port: int = 5433, database: str = DATABASE, timeout: float = 60.0) -> str:
    """Create (first time) and start (unless running) the cluster in data_dir, create `database` if missing;
    returns its URL. Optuna and MLflow each need a database of their own (both keep an alembic version)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            _as_owner([_bin("initdb"), "-D", str(data_dir), "-A", "trust", "-U", _user()], data_dir),
            check=True,
            capture_output=True,
            text=True,
        )
    log = data_dir / "server.log"
    exists = f"SELECT 1 FROM pg_database WHERE datname='{database}'"
    if _query(port, exists).returncode != 0:  # not running yet
        options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_owner(
                [
                    _bin("pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                data_dir,
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    deadline = time.monotonic() + timeout
    while True:  # pg_ctl -w has already waited for connections; this covers a slow first answer
        done = _query(port, exists)
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on port {port} did not answer: {done.stderr.strip()} (see {log})")
        time.sleep(0.5)
    if done.stdout.strip() != "1":
        subprocess.run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", _user(), database],
            check=True,
            capture_output=True,
        )
    return url(port, database)


def stop(data_dir: str | Path) -> None:
    data_dir = Path(data_dir).resolve()
    if (data_dir / "postmaster.pid").exists():
        subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"], data_dir),
            check=True,
            capture_output=True,
            text=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.postgres", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--dir", default=".pgdata")
    p.add_argument("--port", type=int, default=5433)
    p.add_argument("--database", default=DATABASE)
    a = p.parse_args(argv)
    try:
        if a.action == "start":
            print(start(a.dir, a.port, a.database))
        else:
            stop(a.dir)
        return 0
    except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        print(f"error: {str(detail).strip().splitlines()[-1] if str(detail).strip() else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
