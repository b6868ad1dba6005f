"""README's flag maps as command lines: every override a row documents goes through the entry point the shell
runs (`python -m phaseN.train` -> common.config.main), and the resolved config holds its value.

Each row is run in-process through the real CLI entry (`cli()` with sys.argv set, Hydra's `--cfg all`); the
shell scripts and make targets that README shows are run as real subprocesses. `--cfg` prints the composed
config without training, so each call takes the path of a real run up to train(cfg)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def readme_rows(section: str) -> list[str]:
    """Each backticked override span (containing '=') of the flag-map table under README's `## {section}`."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    table = body.split("\n| original flag", 1)[1].split("\n\n", 1)[0]
    spans = []
    for line in table.splitlines()[2:]:  # past the header and its rule
        override_cell = line.split("|")[2]
        spans += [s for s in re.findall(r"`([^`]+)`", override_cell) if "=" in s and not s.startswith("./")]
    return spans


PHASE1_ROWS = readme_rows("Phase 1")
PHASE2_ROWS = readme_rows("Phase 2")


@pytest.fixture(autouse=True)
def _no_hydra_state_left():
    """An in-process Hydra app leaves its singletons set (HydraConfig without a run folder under --cfg): later
    tests in this worker would take them for a running app."""
    yield
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def run_cli(module: str, argv: list[str], capsys, monkeypatch) -> dict:
    """The resolved config (job and hydra) as `python -m {module} {argv} --cfg all` prints it."""
    entry = __import__(module, fromlist=["cli"]).cli
    monkeypatch.setattr(sys, "argv", [module, *argv, "--cfg", "all"])
    capsys.readouterr()
    entry()
    return yaml.safe_load(capsys.readouterr().out)


def expected(value: str):
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)  # YAML 1.1 reads 1e-4 as a string; Hydra reads it as a float
        except ValueError:
            return parsed
    return parsed


def assert_holds(printed: dict, overrides: list[str]) -> None:
    choices = printed["hydra"]["runtime"]["choices"]
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in choices:  # a group selection
            assert choices[key] == value, override
            continue
        node = printed
        for part in key.split("."):
            node = node[part]
        assert node == expected(value), f"{override}: resolved to {node!r}"


def test_readme_has_flag_maps():
    assert len(PHASE1_ROWS) >= 9 and len(PHASE2_ROWS) >= 10
    assert "optim.gamma=0.003" in PHASE1_ROWS and "model=transformer model.d_model=128" in PHASE2_ROWS


@pytest.mark.parametrize("row", PHASE1_ROWS)
def test_phase1_flag_map_row(row, capsys, monkeypatch):
    overrides = row.split()
    # Balanced's options exist under optim=balanced, which ./run_balanced.sh puts first
    argv = ["optim=balanced", *overrides] if row.startswith("optim.") else overrides
    assert_holds(run_cli("phase1.train", argv, capsys, monkeypatch), overrides)


@pytest.mark.parametrize("row", PHASE2_ROWS)
def test_phase2_flag_map_row(row, capsys, monkeypatch):
    overrides = row.split()
    assert_holds(run_cli("phase2.train", overrides, capsys, monkeypatch), overrides)


def test_all_phase1_rows_together(capsys, monkeypatch):
    """The original code's full Balanced command line, every flag at once (lone group selections left out)."""
    overrides = [o for row in PHASE1_ROWS for o in row.split()]
    assert_holds(run_cli("phase1.train", overrides, capsys, monkeypatch), overrides)


@pytest.mark.parametrize(
    "argv", [["optim.gama=0.003"], ["optim=balanced", "optim.gamma=abc"], ["optim=balanced", "optim.w_lr=true"]]
)
def test_typos_still_refused(argv, capsys, monkeypatch):
    key = argv[-1].split("=")[0]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("phase1.train", argv, capsys, monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0]


def _printed_job_config(command: list[str]) -> dict:
    done = subprocess.run([*command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return yaml.safe_load(done.stdout[done.stdout.index("task_name:") :])


@pytest.mark.slow
@pytest.mark.parametrize("script, optim", [("./run_balanced.sh", "balanced"), ("./run_standard.sh", "adam")])
def test_run_scripts_take_readme_overrides(script, optim):
    """README's `./run_balanced.sh lmbda=0.0067 optim.gamma=0.003`, as typed in a shell."""
    extra = ["optim.gamma=0.003"] if optim == "balanced" else []
    cfg = _printed_job_config([script, "lmbda=0.0067", *extra, "--cfg", "job"])
    assert cfg["lmbda"] == 0.0067 and cfg["optim"]["name"] == optim
    if extra:
        assert cfg["optim"]["gamma"] == 0.003


@pytest.mark.slow
def test_make_train_phase2_takes_args():
    cfg = _printed_job_config(["make", "-s", "train-phase2", "ARGS=model=transformer model.d_model=128 --cfg job"])
    assert cfg["model"]["kind"] == "transformer" and cfg["model"]["d_model"] == 128
