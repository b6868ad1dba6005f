"""Surviving faults: SIGKILL of a training run, of a checkpoint write and of a sweep worker; non-finite losses
at several rates. Real processes are killed with SIGKILL (no handler runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from phase2.data import builtin_articles
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


def _lm_command(text: Path, ckpt: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "phase2.train",
        "model=debug",
        "data=file",
        f"data.path={text}",
        "seq_len=16",
        "batch_size=2",
        "loop.max_steps=200",
        "loop.log_every=1",
        "loop.ckpt_every=40",
        "loop.eval_every=0",
        "loop.progress=false",
        "logger=none",
        "device=cpu",
        "diagnostics_every=0",
        f"checkpoint.dir={ckpt}",
        f"hydra.run.dir={run}",
        *extra,
    ]


def _history(run: Path) -> dict[float, float]:
    record = json.loads((run / "training_history.json").read_text())
    return dict(zip(record["steps"], record["train_losses"]))


@pytest.mark.slow
def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:3]))
    subprocess.run(
        _lm_command(text, tmp_path / "full", tmp_path / "full_run"),
        check=True,
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    victim = subprocess.Popen(
        _lm_command(text, tmp_path / "ckpt", tmp_path / "run1"),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: (tmp_path / "ckpt" / "step_00000080.pt").exists(), 240, "the step-80 checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    resumed_from = load_checkpoint(tmp_path / "ckpt" / "last.pt")["global_step"]
    assert 80 <= resumed_from < 200
    subprocess.run(
        _lm_command(text, tmp_path / "ckpt", tmp_path / "run2", f"resume={tmp_path / 'ckpt' / 'last.pt'}"),
        check=True,
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    full, resumed = _history(tmp_path / "full_run"), _history(tmp_path / "run2")
    after = [s for s in full if s > resumed_from]
    assert len(after) == 200 - resumed_from
    assert [resumed[s] for s in after] == pytest.approx([full[s] for s in after], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_exits_128_plus_its_number(tmp_path, signum):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:3]))
    run = subprocess.Popen(
        _lm_command(text, tmp_path / "ckpt", tmp_path / "run"),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: (tmp_path / "ckpt" / "step_00000040.pt").exists(), 240, "the step-40 checkpoint")
    run.send_signal(signum)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 128 + signum, output[-2000:]  # what a shell or a scheduler reads as "stopped"
    assert f"stopped by signal {signum} after a checkpoint" in output
    assert 40 <= load_checkpoint(tmp_path / "ckpt" / "last.pt")["global_step"] < 200


WRITER = """
import sys, torch
from common.checkpoint import save_checkpoint
path, i = sys.argv[1], 0
while True:  # ever newer versions of a ~64 MB checkpoint, as fast as the disk takes them
    i += 1
    save_checkpoint(path, {"kind": "phase2", "model_state_dict": {"w": torch.full((16_000_000,), float(i))}, "i": i})
    print(i, flush=True)
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    # Kill the writer as soon as a temporary shows a write in progress (a fixed sleep landed between writes
    # in most runs on a machine where a write took ~45 ms of its ~65 ms cycle). A kill can still miss by
    # the microseconds between seeing the file and the signal, so up to 5 tries must hit one write.
    hits = 0
    for attempt in range(5):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        path = folder / "last.pt"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
        )
        written = int(writer.stdout.readline())  # one complete version exists
        _wait_for(lambda folder=folder: any(folder.glob(".last.pt.*.tmp")), 30, "a checkpoint write in progress")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        payload = load_checkpoint(path)
        assert payload["i"] >= written
        assert torch.all(payload["model_state_dict"]["w"] == payload["i"])  # a whole version, not a torn one
        assert [p.name for p in folder.glob("*.pt")] == ["last.pt"]  # leftovers are hidden temporaries only
        hits += bool(list(folder.glob(".last.pt.*.tmp")))
        if hits:
            break
    assert hits, "no kill met a write in progress in 5 tries"


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.6])
def test_nonfinite_losses_at_several_rates_are_skipped_and_counted(tmp_path, rate):
    from tests.common.test_loop import _make

    period = round(1 / rate) if rate < 0.5 else 5
    # at 60 %: 3 of every 5 steps, never 3 in a row (the loop's limit here), so the run goes to its end
    bad = [s for s in range(1, 201) if (s % period == 0 if rate < 0.5 else s % 5 in (0, 2, 4))]
    loop, _ = _make(tmp_path, max_steps=200, poison_steps=tuple(bad))
    summary = loop.run()
    assert summary["skipped_steps"] == len(bad) and loop.state.global_step == 200
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())


def _first_run_of(bad: set[int], length: int, steps: int) -> int | None:
    """The step at which `length` poisoned steps in a row first complete, if any."""
    in_a_row = 0
    for step in range(1, steps + 1):
        in_a_row = in_a_row + 1 if step in bad else 0
        if in_a_row == length:
            return step
    return None


@pytest.mark.parametrize("rate, seed", [(0.01, 0), (0.1, 1), (0.6, 2)])
def test_random_nonfinite_losses_skip_or_abort_past_the_limit(tmp_path, rate, seed):
    from common.loop import NonFiniteLossError
    from tests.common.test_loop import _make

    g = torch.Generator().manual_seed(seed)
    bad = {s + 1 for s in torch.nonzero(torch.rand(200, generator=g) < rate).flatten().tolist()}
    abort_at = _first_run_of(bad, 3, 200)  # _make's loop allows 2 skipped steps in a row, aborts at the 3rd
    loop, _ = _make(tmp_path, max_steps=200, poison_steps=tuple(bad))
    if abort_at is None:
        assert loop.run()["skipped_steps"] == len(bad)
        return
    with pytest.raises(NonFiniteLossError, match=rf"^3 consecutive steps .* \(step {abort_at}\); lower the learning"):
        loop.run()
    assert loop.state.skipped_steps == len({s for s in bad if s <= abort_at})


def test_a_diverged_cli_run_ends_with_one_clear_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "phase2.train",
            "logger=none",
            "model=debug",
            "batch_size=2",
            "seq_len=16",
            "optim.lr=1e9",
            "loop.max_steps=60",
            "loop.max_nonfinite_in_row=5",
            "loop.progress=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "5 consecutive steps had a non-finite loss" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: 5 consecutive")


STUDY = """
name: killed
phase: phase1
objective: final/val/loss
overrides: [optim=balanced, model=tiny]
sizes:
  demo: [data.patch_size=64, data.batch_size=2, data.repeats=1, loop.max_steps=8, loop.eval_every=8,
         loop.log_every=1, loop.progress=false, eval.max_images=1, eval.real_bitstreams=false]
search_space:
  optim.gamma: {type: categorical, choices: [0.001, 0.01]}
  optim.w_lr: {type: categorical, choices: [0.01, 0.05]}
sampler: grid
n_trials: 4
"""


@pytest.mark.slow
def test_sweep_worker_killed_mid_trial_is_retried_by_the_next_run(tmp_path):
    import optuna

    from sweeps.run import open_storage, run_study

    study_file = tmp_path / "killed.yaml"
    study_file.write_text(textwrap.dedent(STUDY))
    storage = f"journal:{tmp_path / 'journal.log'}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "sweeps.run", str(study_file), "--storage", storage, "--logger", "none"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def running() -> bool:
        if not (tmp_path / "journal.log").exists():
            return False
        study = optuna.load_study(study_name="killed", storage=open_storage(storage))
        return any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)

    _wait_for(running, 240, "a running trial")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    killed = [
        t
        for t in optuna.load_study(study_name="killed", storage=open_storage(storage)).trials
        if t.state == optuna.trial.TrialState.RUNNING
    ]
    states = lambda trials: [(t.number, t.state.name, t.params) for t in trials]  # noqa: E731 (for messages)
    assert len(killed) == 1, states(optuna.load_study(study_name="killed", storage=open_storage(storage)).trials)
    summary = run_study(str(study_file), storage=storage, logger="none")
    study = optuna.load_study(study_name="killed", storage=open_storage(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert summary["n_complete"] == 4 and len(done) == 4, (summary, states(study.trials))
    assert {(t.params["optim.gamma"], t.params["optim.w_lr"]) for t in done} == {
        (0.001, 0.01),
        (0.001, 0.05),
        (0.01, 0.01),
        (0.01, 0.05),
    }
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [killed[0].number], states(study.trials)  # the killed one, failed
    retry = [t for t in done if t.user_attrs.get("retry_of") == killed[0].number]
    # its grid point run again, also when it was killed before it had suggested its parameters
    assert len(retry) == 1 and retry[0].system_attrs["grid_id"] == killed[0].system_attrs["grid_id"]
    assert retry[0].params.items() >= killed[0].params.items()  # what it had suggested before it was killed


def test_a_locked_mlflow_store_does_not_stall_training_and_nothing_is_lost(tmp_path, mlflow_store):
    import sqlite3
    import threading

    import mlflow

    from common.config import compose
    from phase2.train import train

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(builtin_articles()[:3]))
    released = threading.Event()

    def hold_lock(seconds: float) -> None:  # another process-like writer holding SQLite's write lock
        con = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"), isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()
        released.set()

    stamps = []

    def on_log(step, point):
        stamps.append(time.monotonic())
        if step == 20:
            threading.Thread(target=hold_lock, args=(8.0,), daemon=True).start()

    summary = train(
        compose(
            "phase2",
            [
                "model=debug",
                "data=file",
                f"data.path={text}",
                "seq_len=16",
                "batch_size=2",
                "loop.max_steps=400",
                "loop.log_every=5",
                "loop.eval_every=0",
                "loop.progress=false",
                "device=cpu",
                "diagnostics_every=0",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
                f"paths.output_root={tmp_path}",
                "logger.run_name=locked",
            ],
        ),
        on_log=on_log,
    )
    assert summary["global_step"] == 400
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 4.0  # no step waited for the 8 s lock
    released.wait(30)
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=["phase2"]).iloc[0]
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(5, 401, 5))  # written later, none lost


def _start_tracking_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return subprocess.Popen(
        cmd,
        env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=db.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_a_tracking_server_down_mid_run_warns_once_and_loses_nothing(
    tmp_path, _migrated_store_template, monkeypatch, capsys
):
    import shutil
    import warnings

    import mlflow

    from common.config import compose
    from phase2.train import train

    db, port = tmp_path / "server.db", free_port()
    shutil.copyfile(_migrated_store_template, db)
    servers = [_start_tracking_server(db, tmp_path / "artifacts", port)]
    try:
        _wait_for(lambda: _healthy(port), 120, "the tracking server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        text = tmp_path / "text.txt"
        text.write_text("\n\n".join(builtin_articles()[:3]))
        stamps: dict[int, float] = {}

        def on_log(step, point):  # the server dies at step 50 and is started again at step 150
            stamps[step] = time.monotonic()
            if step == 50:
                os.killpg(servers[0].pid, signal.SIGKILL)
                servers[0].wait(timeout=30)
            elif step == 150:
                servers.append(_start_tracking_server(db, tmp_path / "artifacts", port))
            elif step == 290:  # the end of the run writes synchronously: give the restarted server its time
                _wait_for(lambda: _healthy(port), 120, "the restarted tracking server")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = train(
                compose(
                    "phase2",
                    [
                        "model=debug",
                        "data=file",
                        f"data.path={text}",
                        "seq_len=16",
                        "batch_size=2",
                        "loop.max_steps=300",
                        "loop.log_every=5",
                        "loop.eval_every=0",
                        "loop.progress=false",
                        "device=cpu",
                        "diagnostics_every=0",
                        "logger.flush_seconds=0.2",
                        f"checkpoint.dir={tmp_path / 'ckpt'}",
                        f"paths.output_root={tmp_path}",
                        "logger.run_name=outage",
                    ],
                ),
                on_log=on_log,
            )
        assert summary["global_step"] == 300
        gaps = [stamps[s + 5] - stamps[s] for s in range(50, 285, 5)]
        assert max(gaps) < 2.0, gaps  # steps went on while the server was away (a dead server answers nothing)
        outage = [w for w in caught if "is unavailable" in str(w.message)]
        assert len(outage) == 1, [str(w.message) for w in caught]  # said once, though every flush failed
        assert capsys.readouterr().err.count("is reachable again; buffered metrics written") == 1
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        run = mlflow.search_runs(experiment_names=["phase2"]).iloc[0]
        history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")
        assert sorted(m.step for m in history) == list(range(5, 301, 5))  # the outage's points written later
        assert run["status"] == "FINISHED"
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_bytes) -> a real file system (tmpfs) of that size to fill; mounting one needs root."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"small{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, small_disk):
    text = tmp_path / "text.txt"
    text.write_text(builtin_articles()[0] * 4)

    def train(ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
        command = _lm_command(text, ckpt, tmp_path / f"run-{ckpt.name}", "loop.ckpt_every=1", *extra)
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)

    probe = train(tmp_path / "probe", "loop.max_steps=1")
    assert probe.returncode == 0, probe.stderr[-2000:]
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    disk = small_disk(size * 3 // 2)  # room for one checkpoint, not for two
    first = train(disk, "loop.max_steps=1")
    assert first.returncode == 0, first.stderr[-2000:]
    full = train(disk, "loop.max_steps=4", f"resume={disk / 'last.pt'}")
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: disk full: ") and "step_00000002.pt" in errors[0]
    assert load_checkpoint(disk / "last.pt")["global_step"] == 1  # the last good one, whole
    assert sorted(p.name for p in disk.iterdir()) == ["best.pt", "last.pt", "step_00000001.pt"]


def _unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` as a user whom file permissions bind: root writes through read-only modes, so as root it runs as
    nobody (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return cmd
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: read-only files cannot be made read-only for this user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


@pytest.mark.parametrize("what", ["tracking store", "run folder"])
def test_a_read_only_store_or_run_folder_is_one_line_and_left_as_it_was(what, _migrated_store_template):
    import shutil
    import tempfile

    # outside pytest's own temporary root, whose folders only root may enter
    base = Path(tempfile.mkdtemp(prefix="research-ro-"))
    try:
        base.chmod(0o755)
        locked, writable = base / "locked", base / "writable"
        locked.mkdir()
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)
        store = locked / "mlflow.db"
        shutil.copyfile(_migrated_store_template, store)
        store.chmod(0o444)
        locked.chmod(0o555)
        before = store.read_bytes()
        run_dir = locked / "run" if what == "run folder" else writable / "run"
        env = {**ENV, "HOME": str(writable), "MPLCONFIGDIR": str(writable), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
        logger = "logger=mlflow" if what == "tracking store" else "logger=none"
        cmd = [sys.executable, "-m", "phase1.train", "model=tiny", "loop.max_steps=1", "data.batch_size=1",
               "data.patch_size=64", f"hydra.run.dir={run_dir}", logger]  # fmt: skip
        done = subprocess.run(_unprivileged(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2, done.stderr[-2000:]
        expected = (
            f"tracking store {store} is read-only"
            if what == "tracking store"
            else f"hydra.run.dir={run_dir} cannot be written"
        )
        assert last.startswith("error: ") and expected in last, last
        assert store.read_bytes() == before and not (locked / "run").exists()
    finally:
        for folder in (base / "locked", base):
            folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
