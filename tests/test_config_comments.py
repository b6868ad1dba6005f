"""Every command line a config file's comments show composes: a documented override form that fails would send
users down a dead end."""

from __future__ import annotations

import re
import shlex

import pytest

from common import REPO_ROOT
from common.config import check_overrides

COMMAND = re.compile(r"(?:python -m (phase[12])\.train|make train-(phase[12]) ARGS=)\s*(.*)")


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in sorted((REPO_ROOT / "experiments").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            match = COMMAND.search(line) if line.lstrip().startswith("#") else None
            if match:
                phase = match.group(1) or match.group(2)
                words = shlex.split(match.group(3).strip().strip("`").rstrip("`.").strip('"'), comments=True)
                # a multirun's launcher and its comma lists: the first value of each stands for all
                args = [w.split(",")[0] for w in words if w != "-m" and not w.startswith("hydra")]
                found.append((f"{path.relative_to(REPO_ROOT)}: {match.group(0)}", phase, args))
    return found


COMMANDS = _documented_commands()


def test_the_config_comments_document_commands():
    assert len(COMMANDS) >= 6  # the train configs, data=folder, debug, the experiments, the SLURM launcher


@pytest.mark.parametrize("where, phase, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_documented_command_composes(where, phase, args):
    cfg = check_overrides(phase, args)  # the CLI's own check: unknown keys and wrong types are refused
    for arg in args:
        key, value = arg.split("=", 1)
        node = cfg
        for part in key.lstrip("+").split("."):
            node = node[part] if part in node else None
            if node is None:
                break
        if node is not None and not hasattr(node, "keys"):
            assert str(node) == value, f"{where}: {key} is {node}, not {value}"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO_ROOT / "experiments/phase2/model").glob("*.yaml")))
def test_the_model_override_form_in_a_preset_comment_reaches_the_model(preset):
    text = (REPO_ROOT / "experiments/phase2/model" / f"{preset}.yaml").read_text()
    forms = re.findall(r"(\+model\.overrides\.\w+=\S+)", text)
    if not forms:
        pytest.skip(f"{preset}.yaml documents no model.overrides form")
    from phase2.factory import build_model

    cfg = check_overrides("phase2", [f"model={preset}", *forms])
    model = build_model(cfg.model, vocab_size=256, seq_len=32)
    for form in forms:
        field, value = form.removeprefix("+model.overrides.").split("=", 1)
        assert str(getattr(model.config, field)) == value, f"{form} did not reach the model"
