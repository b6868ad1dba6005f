"""Watch a study: optuna-dashboard on the storage a sweep writes to, live while the sweep runs.

    python -m sweeps.dashboard                             # the balanced study's local storage, on 127.0.0.1:8080
    python -m sweeps.dashboard --study balanced --port 8081
    python -m sweeps.dashboard --storage journal:sweeps/balanced_gamma_wlr.journal.log
    python -m sweeps.dashboard --storage postgresql://user:pass@db/optuna --host 0.0.0.0

--storage takes the URLs `python -m sweeps.run --storage` takes: `sqlite:///<file>`, `journal:<file>`, or any
SQLAlchemy URL (PostgreSQL). Without it, the sweep's own default for --study (a study file, or a name under
sweeps/studies/): optuna.db at the repo root for one worker, sweeps/<study name>.journal.log for several; when
both exist, the one written last. The dashboard lists every study in the storage, at http://HOST:PORT/dashboard.

Looking never creates a storage: a missing or empty file, a database without Optuna's tables or a server that
does not answer is one line `error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import UserError, run_guarded
from sweeps.run import check_local_storage, database_error_line, default_storage
from sweeps.study import load_study


def local_file(url: str) -> Path | None:
    """The file behind a local storage URL (journal, SQLite), or None for a database server."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def storage_for(study: str) -> str:
    """The storage the sweep of `study` uses by default: the one of its two defaults (one worker, several) that
    exists, the newer if both do, since a sweep may have run either way."""
    spec = load_study(study)
    candidates = [default_storage(spec, workers) for workers in (1, 2)]
    found = [url for url in candidates if local_file(url).is_file()]
    if not found:
        raise UserError(
            f"study {spec.name!r} has no storage yet (neither {' nor '.join(candidates)} exists): "
            "run its sweep first, or give --storage"
        )
    return max(found, key=lambda url: local_file(url).stat().st_mtime)


def check_exists(url: str) -> None:
    """A local storage must be a file with content: SQLite and the journal would create an empty one instead."""
    path = local_file(url)
    if path is None:
        return
    check_local_storage(url)  # a folder, a file that is not SQLite: named as the sweep names them
    if not path.is_file():
        raise UserError(f"Optuna storage {url}: {path} does not exist (run a sweep first, or check the path)")
    if path.stat().st_size == 0:
        raise UserError(f"Optuna storage {url}: {path} is empty, no sweep has written to it yet")


def open_for_viewing(url: str):
    """The storage object optuna-dashboard serves, read once here so a bad one fails now, not in the browser."""
    from optuna.exceptions import StorageInternalError
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.exc import SQLAlchemyError

    check_exists(url)
    if url.startswith("journal:"):
        # optuna-dashboard's own CLI takes a bare journal path, run_server a storage object: build it here
        try:
            return JournalStorage(JournalFileBackend(str(local_file(url))))
        except ValueError as err:  # an SQLite file or another binary one: the journal's replay cannot decode it
            raise UserError(f"Optuna storage {url} is not an Optuna journal file ({err})") from None
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a storage URL: give sqlite:///<file>, journal:<file> or a URL")
    # As optuna-dashboard opens a URL itself: no tables are created in a database that has none, and a schema
    # of another Optuna version is still shown.
    try:  # opening connects (to read the schema version), the read finds a database without Optuna's tables
        storage = RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
        storage.get_all_studies()
    except (SQLAlchemyError, StorageInternalError) as err:  # Optuna wraps the driver's error in its own
        reason = database_error_line(err.__cause__ if isinstance(err, StorageInternalError) else err)
        raise UserError(f"Optuna storage {url} cannot be read ({reason})") from None
    return storage


def study_page(storage, study: str, base: str) -> str | None:
    """The dashboard page of `study` when the storage holds it (optuna-dashboard routes studies by id)."""
    try:
        return f"{base}/dashboard/studies/{storage.get_study_id_from_name(load_study(study).name)}"
    except KeyError:
        return None


def serve(storage, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    try:
        run_server(storage, host=host, port=port)
    except OSError as err:  # the port is taken, or the host is not an address of this machine
        raise UserError(f"optuna-dashboard cannot listen on {host}:{port} ({err.strerror or err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="Optuna storage URL (default: the sweep's storage of --study)")
    parser.add_argument("--study", default="balanced", help="a study file, or the name of one in sweeps/studies/")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    def body() -> None:
        url = args.storage or storage_for(args.study)
        storage = open_for_viewing(url)
        base = f"http://{args.host}:{args.port}"
        page = study_page(storage, args.study, base)
        print(f"optuna-dashboard for {url}: {base}/dashboard" + (f", study {args.study}: {page}" if page else ""))
        sys.stdout.flush()  # before the server takes over the process
        serve(storage, args.host, args.port)

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
