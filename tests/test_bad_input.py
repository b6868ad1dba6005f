"""The bad-input catalogue, for both phases and every command line: each mistake ends with one line
`error: ...` naming the problem, a non-zero exit, no traceback, and every file written before (checkpoints, the
MLflow store, an earlier output) is byte-identical afterwards.

Each case is the real command line (`python -m <module> <args>`) in a process of its own. Starting Python and
importing torch, CompressAI and Hydra costs ~4 s a process, so a launcher imports them once and forks one child
per case, which runs the module as `__main__` with the case's argv, working directory and environment.
`test_launcher_matches_a_fresh_interpreter` checks that a fresh interpreter answers the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import REPO_ROOT
from common.checkpoint import save_checkpoint

pytestmark = pytest.mark.xdist_group("bad_input")  # one worker, so one launcher pays the imports

LAUNCHER = r"""
import json, os, runpy, sys, traceback, warnings
import phase1.train, phase2.train, phase2.evaluate, phase2.generate, sweeps.run  # the imports every case repeats
print("ready", flush=True)
for line in sys.stdin:
    case = json.loads(line)
    log = os.open(case["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    pid = os.fork()
    if pid == 0:
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(case["cwd"])
        os.environ.update(case["env"])
        sys.argv = [case["module"], *case["args"]]
        # runpy says so when the module was imported above; a fresh interpreter would not print it
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        code = 0
        try:
            runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
        except SystemExit as stop:  # what the interpreter does with sys.exit(...)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(log)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Launcher:
    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def __call__(self, module: str, args: list[str], env: dict | None = None) -> tuple[int, str]:
        self.count += 1
        log = self.folder / f"case{self.count}.log"
        request = {"module": module, "args": args, "cwd": str(REPO_ROOT), "env": env or {}, "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()), log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    run = Launcher(tmp_path_factory.mktemp("logs"))
    yield run
    run.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, _migrated_store_template) -> Path:
    """Everything the cases read: good and broken data, checkpoints of both phases, streams, an MLflow store."""
    from phase1.hpcm import build_hpcm

    d = tmp_path_factory.mktemp("inputs")
    (d / "empty").mkdir()
    for split in ("train", "val", "test"):  # a folder laid out for training whose training image is broken
        (d / "corrupt" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "corrupt" / split / "good.png")
    (d / "corrupt" / "train" / "good.png").write_bytes(b"\x89PNG\r\n garbage")
    (d / "flat").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "flat" / "one.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n garbage")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "earlier.png")  # an output written before
    (d / "blank.txt").write_text("  \n")
    (d / "text.txt").write_text("some text to read " * 50)
    (d / "cut.json").write_text('{"points": [{"bpp": 0.1,')
    (d / "other.json").write_text('{"results": {"bpp": [0.1]}}')
    (d / "photo.hpcm").write_bytes(b"definitely not an HPCM stream" * 10)
    save_checkpoint(
        d / "codec.pt",
        {"kind": "phase1", "model_state_dict": build_hpcm("tiny").state_dict(), "config": {"model": {"name": "tiny"}}},
    )
    save_checkpoint(d / "lm.pt", {"kind": "phase2", "model_state_dict": {}})
    from common.config import compose, to_plain

    trained = to_plain(compose("phase1", [*P1, "lmbda=0.0067"]))  # a run of P1 under another lambda
    save_checkpoint(d / "run1.pt", {"kind": "phase1", "model_state_dict": {}, "config": trained, "global_step": 1})
    for name, kind in (("cut1.pt", "phase1"), ("cut2.pt", "phase2")):
        path = save_checkpoint(d / name, {"kind": kind, "model_state_dict": {"w": torch.zeros(1000)}})
        path.write_bytes(path.read_bytes()[:300])
    shutil.copyfile(_migrated_store_template, d / "mlflow.db")
    (d / "broken.yaml").write_text("name: [unclosed\nphase: phase1\n")
    curve = [{"bpp": 0.1 * (i + 1), "psnr": 30.0 + i} for i in range(4)]
    (d / "curve.json").write_text(json.dumps({"points": curve}))
    (d / "far.json").write_text(json.dumps({"points": [{**p, "psnr": p["psnr"] + 20} for p in curve]}))
    (d / "negative.json").write_text(json.dumps({"points": [{**curve[0], "bpp": -1.0}, *curve[1:]]}))
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "victim" / "checkpoints").mkdir(parents=True)  # another run's folder, with its checkpoints
    shutil.copyfile(d / "codec.pt", d / "victim" / "checkpoints" / "last.pt")
    (d / "victim" / "config.yaml").write_text("task_name: phase1\n")
    Image.fromarray(np.zeros((1, 65600, 3), np.uint8)).save(d / "wide.png")  # over the header's 16-bit sides
    (d / "txtdir" / "notes.txt").mkdir(parents=True)  # a folder named like a text file
    (d / "latin1.json").write_bytes(b'{"points": "\xff"}')
    (d / "diag").mkdir()
    shutil.copyfile(d / "lm.pt", d / "diag" / "comprehensive_report.json")  # a checkpoint under the report's name
    study = "phase: phase1\nobjective: final/val/loss\n"
    (d / "nameless.yaml").write_text(study)
    (d / "listspace.yaml").write_text(f"name: s\n{study}search_space:\n  lmbda: [1]\n")
    (d / "wordcount.yaml").write_text(f"name: s\n{study}n_trials: two\n")
    (d / "escape.yaml").write_text(f"name: ../../escape\n{study}")
    (d / "configured").mkdir()  # a folder holding a config.yaml of its own (another run's, or the user's)
    (d / "configured" / "config.yaml").write_text("lr: 0.1\n")
    (d / "unreleased").mkdir()
    (d / "unreleased" / "manifest.json").write_text('{"files": {}}')
    return d


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Training runs log to the MLflow store in the inputs folder (logger=mlflow): bad input must not touch it.
P1 = ["logger=mlflow", "model=tiny", "loop.max_steps=1", "data.batch_size=1", "data.patch_size=64"]
P2 = ["logger=mlflow", "model=debug", "loop.max_steps=1", "batch_size=2", "seq_len=16"]

CASES = [
    # (case, module, args ({d}: the inputs folder), words the error line must hold)
    ("p1 missing data folder", "phase1.train", [*P1, "data=folder", "data.root={d}/nope"], ["nope", "does not exist"]),
    ("p1 empty data folder", "phase1.train", [*P1, "data=folder", "data.root={d}/empty"], ["holds no images"]),
    ("p1 corrupt image", "phase1.train", [*P1, "data=folder", "data.root={d}/corrupt"], ["none of the 1 files"]),
    (
        "p1 folder without splits",
        "phase1.train",
        [*P1, "data=folder", "data.root={d}/flat"],
        ["flat", "no train/ or test/ folder"],
    ),
    ("p1 monitor on test", "phase1.train", [*P1, "loop.monitor=test/loss"], ["loop.monitor=test/loss", "val"]),
    ("p1 unknown preset", "phase1.train", [*P1, "model=hpcm_huge"], ["model/hpcm_huge", "hpcm_base"]),
    ("p1 invalid override", "phase1.train", [*P1, "lamda=0.01"], ["Could not override 'lamda'"]),
    ("p1 two modes", "phase1.train", [*P1, "-m", "--cfg", "job"], ["--multirun and --cfg do not go together"]),
    ("p1 wrong type", "phase1.train", [*P1, "optim.lr=fast"], ["optim.lr='fast' must be a number"]),
    ("p1 truncated checkpoint", "phase1.train", [*P1, "resume={d}/cut1.pt"], ["cut1.pt", "truncated"]),
    (
        "p1 resume under another lambda",
        "phase1.train",
        [*P1, "resume={d}/run1.pt"],
        ["run1.pt", "lmbda=0.0067", "lmbda=0.013", "resume_allow_changes=true"],
    ),
    ("p1 other phase", "phase1.train", [*P1, "resume={d}/lm.pt"], ["phase2 checkpoint", "phase1 checkpoint is needed"]),
    (
        "p2 missing text",
        "phase2.train",
        [*P2, "data=file", "data.path={d}/nowhere.txt"],
        ["nowhere.txt", "does not exist"],
    ),
    ("p2 empty folder", "phase2.train", [*P2, "data=file", "data.path={d}/empty"], ["holds no"]),
    ("p2 empty text", "phase2.train", [*P2, "data=file", "data.path={d}/blank.txt"], ["blank.txt", "is empty"]),
    ("p2 unknown preset", "phase2.train", [*P2, "model.preset=huge"], ["huge"]),
    ("p2 unknown group option", "phase2.train", [*P2, "model=huge"], ["model", "available"]),
    ("p2 invalid override", "phase2.train", [*P2, "optim.no_such_key=1"], ["no_such_key"]),
    ("p2 wrong type", "phase2.train", [*P2, "batch_size=many"], ["batch_size", "must be a number"]),
    ("p2 truncated checkpoint", "phase2.train", [*P2, "resume={d}/cut2.pt"], ["cut2.pt", "truncated"]),
    ("p2 resume a bare checkpoint", "phase2.train", [*P2, "resume={d}/lm.pt"], ["lm.pt", "holds no tokenizer"]),
    ("p2 init_from another model", "phase2.train", [*P2, "init_from={d}/lm.pt"], ["lm.pt", "does not fit"]),
    (
        "p2 other phase",
        "phase2.train",
        [*P2, "resume={d}/codec.pt"],
        ["phase1 checkpoint", "phase2 checkpoint is needed"],
    ),
    (
        "decode corrupt bitstream",
        "phase1.codec",
        ["decode", "{d}/photo.hpcm", "{d}/earlier.png", "--checkpoint", "{d}/codec.pt"],
        ["photo.hpcm"],
    ),
    (
        "decode to a new file",
        "phase1.codec",
        ["decode", "{d}/photo.hpcm", "{d}/new.png", "--checkpoint", "{d}/codec.pt"],
        ["photo.hpcm"],
    ),
    (
        "encode corrupt image",
        "phase1.codec",
        ["encode", "{d}/bad.png", "{d}/new.hpcm", "--checkpoint", "{d}/codec.pt"],
        ["bad.png", "cannot be read"],
    ),
    (
        "encode truncated checkpoint",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/new.hpcm", "--checkpoint", "{d}/cut1.pt"],
        ["cut1.pt"],
    ),
    ("p1 evaluate other phase", "phase1.evaluate", ["{d}/lm.pt"], ["lm.pt", "phase2 checkpoint"]),
    (
        "encode other phase",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/new.hpcm", "--checkpoint", "{d}/lm.pt"],
        ["lm.pt", "phase1 checkpoint is needed"],
    ),
    ("p1 evaluate empty folder", "phase1.evaluate", ["{d}/codec.pt", "--data", "{d}/empty"], ["holds no images"]),
    ("p2 evaluate other phase", "phase2.evaluate", ["{d}/codec.pt", "{d}/text.txt"], ["phase1 checkpoint"]),
    ("p2 evaluate truncated checkpoint", "phase2.evaluate", ["{d}/cut2.pt", "{d}/text.txt"], ["cut2.pt", "truncated"]),
    (
        "p2 generate truncated checkpoint",
        "phase2.generate",
        ["{d}/cut2.pt", "--prompt", "hi"],
        ["cut2.pt", "truncated"],
    ),
    (
        "compare malformed JSON",
        "phase1.evaluate",
        ["compare", "{d}/cut.json", "{d}/cut.json"],
        ["cut.json", "not JSON"],
    ),
    ("compare not a curve", "phase1.evaluate", ["compare", "{d}/other.json", "{d}/cut.json"], ["other.json", "points"]),
    (
        "p1 evaluate --out is the checkpoint",
        "phase1.evaluate",
        ["{d}/codec.pt", "--out", "{d}/codec.pt"],
        ["--out", "codec.pt", "checkpoint", "destroy"],
    ),
    (
        "p2 evaluate --json is the checkpoint",
        "phase2.evaluate",
        ["{d}/lm.pt", "{d}/text.txt", "--json", "{d}/lm.pt"],
        ["--json", "lm.pt", "checkpoint"],
    ),
    (
        "encode over the checkpoint",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/codec.pt", "--checkpoint", "{d}/codec.pt"],
        ["codec.pt", "is the checkpoint"],
    ),
    (
        "decode a folder",
        "phase1.codec",
        ["decode", "{d}/empty", "{d}/new.png", "--checkpoint", "{d}/codec.pt"],
        ["empty", "is a folder"],
    ),
    (
        "encode with a folder as checkpoint",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/new.hpcm", "--checkpoint", "{d}/empty"],
        ["empty", "is a folder"],
    ),
    (
        "encode with random bytes as checkpoint",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/new.hpcm", "--checkpoint", "{d}/random.pt"],
        ["random.pt", "not a torch checkpoint"],
    ),
    (
        "p1 checkpoint.dir of another run",
        "phase1.train",
        [*P1, "checkpoint.dir={d}/victim/checkpoints"],
        ["checkpoint.dir=", "another run's checkpoints", "resume="],
    ),
    (
        "p1 hydra.run.dir of another run",
        "phase1.train",
        [*P1, "hydra.run.dir={d}/victim"],
        ["hydra.run.dir=", "another run's checkpoints"],
    ),
    ("p1 zero batch", "phase1.train", [*P1[:3], "data.batch_size=0", P1[4]], ["data.batch_size=0", ">= 1"]),
    ("p1 zero patch", "phase1.train", [*P1[:4], "data.patch_size=0"], ["data.patch_size=0", ">= 1"]),
    ("p1 device typo", "phase1.train", [*P1, "device=gpu0"], ["device='gpu0'", "not a device"]),
    ("p2 zero window", "phase2.train", [*P2[:4], "seq_len=0"], ["seq_len=0", ">= 1"]),
    ("p2 zero batch", "phase2.train", [*P2[:3], "batch_size=0", P2[4]], ["batch_size=0", ">= 1"]),
    ("p1 unknown tracking scheme", "phase1.train", [*P1, "logger.tracking_uri=bogus://x"], ["bogus://x", "scheme"]),
    ("compare disjoint curves", "phase1.evaluate", ["compare", "{d}/curve.json", "{d}/far.json"], ["no PSNR range"]),
    (
        "compare a negative rate",
        "phase1.evaluate",
        ["compare", "{d}/curve.json", "{d}/negative.json"],
        ["negative.json", "point 0", "bpp=-1.0"],
    ),
    (
        "compare --plot is a folder",
        "phase1.evaluate",
        ["compare", "{d}/curve.json", "{d}/curve.json", "--plot", "{d}/empty", "--bootstrap", "0"],
        ["--plot", "is a folder"],
    ),
    ("sweep broken study file", "sweeps.run", ["{d}/broken.yaml", "--logger", "none"], ["broken.yaml", "YAML"]),
    (
        "sweep storage is a folder",
        "sweeps.run",
        ["balanced", "--storage", "sqlite:///{d}/empty", "--logger", "none"],
        ["empty", "is a folder"],
    ),
    (
        "sweep storage is not SQLite",
        "sweeps.run",
        ["balanced", "--storage", "sqlite:///{d}/text.txt", "--logger", "none"],
        ["text.txt", "not an SQLite database"],
    ),
    ("report unknown experiment", "reports.build", ["--experiment", "no_such_experiment"], ["no runs", "no_such"]),
    ("report path as a name", "reports.build", ["--study", "../../escape"], ["--study", "plain name"]),
    ("sweep unknown study", "sweeps.run", ["no_such_study", "--logger", "none"], ["no_such_study"]),
    (
        "codec image too wide",
        "phase1.codec",
        ["encode", "{d}/wide.png", "{d}/out/w.hpcm", "--checkpoint", "{d}/codec.pt", "--device", "cpu"],
        ["wide.png", "65600x1", "65536"],
    ),
    (
        "codec meta device",
        "phase1.codec",
        ["encode", "{d}/earlier.png", "{d}/out/x.hpcm", "--checkpoint", "{d}/codec.pt", "--device", "meta"],
        ["device='meta'", "not a device"],
    ),
    ("p2 folder named like text", "phase2.train", [*P2, "data=file", "data.path={d}/txtdir"], ["txtdir", "holds no"]),
    ("p1 zero learning rate", "phase1.train", [*P1, "optim.lr=0"], ["optim.lr=0", "> 0"]),
    ("p1 nan clipping", "phase1.train", [*P1, "loop.clip_grad_norm=nan"], ["loop.clip_grad_norm=nan", "finite"]),
    ("p1 infinite lambda", "phase1.train", [*P1, "lmbda=inf"], ["lmbda=inf", "finite"]),
    ("p1 new key typo", "phase1.train", [*P1, "+lamda=0.05"], ["+lamda=0.05", "nothing reads", "lmbda"]),
    ("p1 multirun value", "phase1.train", ["-m", *P1, "lmbda=0.1,abc"], ["lmbda='abc'", "must be a number"]),
    ("p1 multirun key", "phase1.train", ["-m", *P1, "lamda=0.1,0.2"], ["'lamda'", "no such key", "lmbda"]),
    ("p2 empty run folder", "phase2.train", [*P2, "hydra.run.dir="], ["hydra.run.dir is empty"]),
    ("p2 run folder with a config", "phase2.train", [*P2, "hydra.run.dir={d}/configured"], ["config.yaml"]),
    ("p2 sample temperature", "phase2.train", [*P2, "sample.temperature=0"], ["sample.temperature=0", "> 0"]),
    ("p2 nan learning rate", "phase2.train", [*P2, "optim.lr=nan"], ["optim.lr=nan", "finite"]),
    (
        "diagnostics over its checkpoint",
        "phase2.diagnostics",
        ["{d}/diag/comprehensive_report.json", "--out", "{d}/diag"],
        ["--out", "checkpoint", "destroy"],
    ),
    ("compare a binary file", "phase1.evaluate", ["compare", "{d}/latin1.json", "{d}/curve.json"], ["latin1.json"]),
    (
        "compare --plot format",
        "phase1.evaluate",
        ["compare", "{d}/curve.json", "{d}/curve.json", "--plot", "{d}/out/rd.xyz", "--bootstrap", "0"],
        ["--plot", "rd.xyz", ".png"],
    ),
    ("sweep study without name", "sweeps.run", ["{d}/nameless.yaml", "--logger", "none"], ["nameless.yaml", "name"]),
    ("sweep space as a list", "sweeps.run", ["{d}/listspace.yaml", "--logger", "none"], ["search_space.lmbda"]),
    ("sweep trials in words", "sweeps.run", ["{d}/wordcount.yaml", "--logger", "none"], ["n_trials='two'"]),
    ("sweep name as a path", "sweeps.run", ["{d}/escape.yaml", "--logger", "none"], ["escape", "plain name"]),
    (
        "sweep storage without driver",
        "sweeps.run",
        ["balanced", "--storage", "mysql://u:p@localhost/db", "--logger", "none"],
        ["mysql://", "driver"],
    ),
    (
        "sweep journal is a folder",
        "sweeps.run",
        ["balanced", "--storage", "journal:{d}/empty", "--logger", "none"],
        ["journal:", "is a folder"],
    ),
    ("release into a file", "common.release", ["{d}/text.txt", "{d}/victim"], ["text.txt", "is a file"]),
    ("release check of nothing", "common.release", ["{d}/unreleased", "--check"], ["lists no files"]),
    (
        "sweep unknown size",
        "sweeps.run",
        ["balanced", "--size", "huge", "--storage", "sqlite:///{d}/optuna.db", "--logger", "none"],
        ["size='huge'", "demo"],
    ),
]


def _assert_one_line(rc: int, output: str, needles: list[str]) -> None:
    errors = [ln for ln in output.strip().splitlines() if ln.startswith("error:")]
    assert rc != 0, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert len(errors) == 1, output[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("case, module, args, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(launcher, files, tmp_path, case, module, args, needles):
    before = _snapshot(files)
    argv = [a.format(d=files) for a in args]
    if module.endswith(".train") and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.append(f"hydra.run.dir={tmp_path / 'run'}")  # Hydra's own run folder, not the inputs folder
    rc, output = launcher(module, argv, env={"MLFLOW_TRACKING_URI": f"sqlite:///{files / 'mlflow.db'}"})
    _assert_one_line(rc, output, needles)
    assert _snapshot(files) == before  # nothing written before is touched, and no partial output appears


@pytest.mark.parametrize(
    "module, args",
    [
        ("phase2.evaluate", ["{d}/lm.pt", "{d}/text.txt", "--batch-size", "0"]),
        ("phase2.evaluate", ["{d}/lm.pt", "{d}/text.txt", "--seq-len", "-3"]),
        ("phase2.diagnostics", ["{d}/lm.pt", "--tokens", "0"]),
        ("phase2.generate", ["{d}/lm.pt", "--prompt", "hi", "--max-new-tokens", "0"]),
        ("sweeps.run", ["balanced", "--workers", "0"]),
    ],
)
def test_counts_below_one_are_refused_by_the_argument_parser(launcher, files, module, args):
    rc, output = launcher(module, [a.format(d=files) for a in args])
    assert rc == 2 and "Traceback" not in output, output[-2000:]
    assert "must be >= 1" in output.strip().splitlines()[-1], output[-2000:]


STORE_CASES = [
    ("phase1.train", [*P1, "hydra.run.dir={d}/run"]),
    ("phase2.train", [*P2, "hydra.run.dir={d}/run"]),
    ("reports.build", ["--experiment", "phase1"]),
    ("sweeps.run", ["balanced", "--storage", "sqlite:///{d}/optuna.db"]),
]


@pytest.mark.parametrize("module, args", STORE_CASES, ids=[c[0] for c in STORE_CASES])
@pytest.mark.parametrize("store", ["garbage", "folder"])
def test_a_broken_tracking_store_is_one_line_naming_it(launcher, tmp_path, module, args, store):
    path = tmp_path / "mlflow.db"
    if store == "garbage":
        path.write_bytes(b"\x00\x01 not a database " * 200)
    else:
        path.mkdir()
    store_now = lambda: path.read_bytes() if store == "garbage" else sorted(path.iterdir())  # noqa: E731
    before = store_now()
    argv, env = [a.format(d=tmp_path) for a in args], {"MLFLOW_TRACKING_URI": f"sqlite:///{path}"}
    rc, output = launcher(module, argv, env=env)
    _assert_one_line(rc, output, [str(path), "not an SQLite database" if store == "garbage" else "is a folder"])
    assert rc == 2 and store_now() == before  # the store is left as it was, for its owner to recover


def test_launcher_matches_a_fresh_interpreter(launcher, files, tmp_path):
    args = [*P2, "resume=" + str(files / "codec.pt"), f"hydra.run.dir={tmp_path}", "logger=none"]
    fresh = subprocess.run(
        [sys.executable, "-m", "phase2.train", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    forked = launcher("phase2.train", args)
    error = [ln for ln in fresh.stderr.splitlines() if ln.startswith("error:")]
    assert fresh.returncode == forked[0] == 2
    assert error == [ln for ln in forked[1].splitlines() if ln.startswith("error:")] and len(error) == 1


def test_launcher_shows_a_genuine_crash(launcher):
    rc, output = launcher("phase1.codec", ["encode"])  # argparse: a usage error, exit 2, no traceback
    assert rc == 2 and "usage:" in output
    rc, output = launcher("zipfile", ["-l", "/no/such/file.zip"])  # an uncaught exception keeps its traceback
    assert rc == 1 and "Traceback" in output
