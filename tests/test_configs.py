"""Every YAML file under experiments/ composes, with the primary config it belongs to."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, compose

PRIMARIES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
SKIP_GROUPS = {"hydra"}  # Hydra's own node: exercised by every compose


def _primary_for(group: str, option: str) -> str:
    """phaseN/... groups and experiment files named phaseN_* belong to phaseN; the rest compose with base."""
    head = group.split("/")[0]
    if head in PRIMARIES:
        return head
    for primary in PRIMARIES:
        if option.startswith(f"{primary}_"):
            return primary
    return "base"


def _group_options():
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONFIG_DIR)
        if len(rel.parts) == 1 or rel.parts[0] in SKIP_GROUPS:
            continue
        group, option = "/".join(rel.parts[:-1]), path.stem
        yield pytest.param(group, option, id=f"{group}={option}")


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_configs_compose_and_resolve(primary):
    cfg = compose(primary)
    OmegaConf.resolve(cfg)
    assert Path(cfg.paths.root_dir) == CONFIG_DIR.parent


@pytest.mark.parametrize("group,option", list(_group_options()))
def test_every_group_option_composes(group, option):
    primary = _primary_for(group, option)
    # Options whose file says `@package _global_` are selected with `+group=option` when the primary has no
    # default for that group (experiment files); otherwise a plain override selects them.
    defaults = [str(d) for d in OmegaConf.load(CONFIG_DIR / f"{primary}.yaml").get("defaults", [])]
    listed = any(d.startswith(f"{{'{group}'") or d.startswith(f"{{'override /{group}'") for d in defaults)
    override = f"{group}={option}" if listed else f"+{group}={option}"
    cfg = compose(primary, [override])
    OmegaConf.resolve(cfg)


def test_unknown_override_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose("base", ["logger=wandb"])


def test_debug_fast_dev_run_turns_tracking_off():
    cfg = compose("base", ["+debug=fast_dev_run"])
    assert cfg.logger.backend == "none" and cfg.loop.max_steps == 2
