"""`python -m sweeps.dashboard` (`make optuna-dashboard`) serves a study's storage: a real headless Chromium shows
the study and its trials, on SQLite and on a journal file, and optuna-dashboard's JSON API has the trials'
numbers and states. A storage that is not there is one line `error: ...`, exit status 2, and is not created."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from common import REPO_ROOT
from tests.servers import CHROMIUM, chromium, free_port, wait_http

pytestmark = pytest.mark.slow
STUDY = "tiny"
# Parameter names found nowhere else on the dashboard's pages: seeing them means the trials are shown.
TRIALS = [
    {"lr_probe": 0.5, "width_probe": 8},
    {"lr_probe": 0.25, "width_probe": 16},
    {"lr_probe": 0.125, "width_probe": 32},
]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _page_text(url: str) -> str:
    """What a person reads on the page once its scripts have run: the DOM without tags, scripts and styles."""
    dom = chromium("--dump-dom", url, budget_ms=10000)
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _make_study(storage) -> None:
    """Three finished trials with known parameters and values, added directly: no objective to run."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    space = {"lr_probe": FloatDistribution(0.01, 1.0, log=True), "width_probe": IntDistribution(1, 64)}
    for params in TRIALS:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=params["lr_probe"] * 2))


def _storage(kind: str, tmp_path: Path, request) -> str:
    """A real study in a storage of `kind`; returns the URL the dashboard is given (the sweep's own forms)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if kind in ("sqlite", "postgresql"):
        url = (
            f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_server")[0]
        )
        if STUDY in optuna.get_all_study_names(url):  # the server is the module's: an earlier test made it
            optuna.delete_study(study_name=STUDY, storage=url)
        _make_study(url)
        return url
    path = tmp_path / f"{STUDY}.journal.log"
    _make_study(JournalStorage(JournalFileBackend(str(path))))
    return f"journal:{path}"


def _dashboard(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.dashboard", *args]


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def served(request, tmp_path):
    """The dashboard serving a three-trial study, as a subprocess on a free port; stopped at teardown."""
    url = _storage(request.param, tmp_path, request)
    port = free_port()
    server = subprocess.Popen(
        _dashboard("--storage", url, "--port", str(port)),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/api/studies", 60, server)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        server.stderr.close()
    time.sleep(1)
    # "--" ends pgrep's options, or it takes the pattern for one of them and finds nothing (status 2)
    leftovers = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
    assert leftovers.returncode == 1, f"the dashboard left processes behind: {leftovers.stdout or leftovers.stderr}"


def _study_id(base: str) -> int:
    summaries = _get_json(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [STUDY]
    return summaries[0]["study_id"]


def test_api_has_the_study_and_its_trials(served):
    study = _get_json(f"{served}/api/studies/{_study_id(served)}")
    assert study["name"] == STUDY
    trials = sorted(study["trials"], key=lambda t: t["number"])
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert {t["state"] for t in trials} == {"Complete"}
    for trial, params in zip(trials, TRIALS):
        assert {p["name"]: p["param_internal_value"] for p in trial["params"]} == params
        assert trial["values"] == [params["lr_probe"] * 2]
    assert [t["number"] for t in study["best_trials"]] == [2]  # minimised: the smallest value


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test-deps` installs it, as root)")
def test_browser_shows_the_study_and_its_trials(served):
    study_id = _study_id(served)
    assert STUDY in _page_text(f"{served}/dashboard")

    study_page = _page_text(f"{served}/dashboard/studies/{study_id}")
    for text in (f"{STUDY} (id={study_id})", "lr_probe", "Best Trial (number=2)"):
        assert text in study_page, f"{text!r} is not on the study's page"

    trials_page = _page_text(f"{served}/dashboard/studies/{study_id}/trials")
    for text in ("3 Trials", "Trial 0", "Trial 1", "Trial 2", "Complete", "lr_probe", "width_probe"):
        assert text in trials_page, f"{text!r} is not on the study's trial list"


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/optuna.db", "journal:{tmp}/sweeps/tiny.journal.log"])
def test_missing_storage_is_one_line_and_not_created(tmp_path, url):
    url = url.format(tmp=tmp_path)
    out = subprocess.run(
        _dashboard("--storage", url, "--port", str(free_port())),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "does not exist" in out.stderr
    assert list(tmp_path.iterdir()) == [], "looking at a missing storage created files"


def test_database_without_optuna_tables_is_one_line(tmp_path, capsys):
    from sweeps.dashboard import main

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table unrelated (a)")
    assert main(["--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Optuna storage sqlite:///{db} cannot be read") and err.count("\n") == 1


def test_default_storage_is_the_sweeps(tmp_path, monkeypatch, capsys):
    """No --storage: the balanced sweep's own default (sweeps.run.default_storage), the newer of its two forms."""
    import sweeps.run
    from sweeps.dashboard import main, storage_for

    monkeypatch.setattr(sweeps.run, "REPO_ROOT", tmp_path)
    assert main([]) == 2  # nothing there yet: said, nothing created
    err = capsys.readouterr().err
    assert err.startswith("error: study 'balanced_gamma_wlr' has no storage yet") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "optuna.db").write_bytes(b"")
    assert storage_for("balanced") == f"sqlite:///{tmp_path / 'optuna.db'}"
    journal = tmp_path / "sweeps" / "balanced_gamma_wlr.journal.log"
    journal.parent.mkdir()
    journal.write_text("")
    os.utime(tmp_path / "optuna.db", (time.time() - 60, time.time() - 60))
    assert storage_for("balanced") == f"journal:{journal}"


def test_make_target_passes_storage_and_port():
    """`make optuna-dashboard` is the module's command line; 8080 unless PORT is given (5000 is MLflow's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "STORAGE", "HOST", "MAKEFLAGS", "MFLAGS")}
    dry = subprocess.run(["make", "-n", "optuna-dashboard"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "-m sweeps.dashboard --host 127.0.0.1 --port 8080" in " ".join(dry.stdout.split())
    given = ["make", "-n", "optuna-dashboard", "STORAGE=journal:/x/y.log", "PORT=8123"]
    dry = subprocess.run(given, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert '-m sweeps.dashboard --storage "journal:/x/y.log" --host 127.0.0.1 --port 8123' in dry.stdout
