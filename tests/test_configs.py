"""Every YAML file under experiments/ composes, with the primary config it belongs to."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, compose

# A phase's primary config is experiments/<phase>/train.yaml with its groups beside it; base.yaml and the
# shared groups (logger, debug, paths) sit at the top.
PHASES = sorted(p.parent.name for p in CONFIG_DIR.glob("*/train.yaml"))
PRIMARIES = ["base", *PHASES]
SKIP_GROUPS = {"hydra"}  # Hydra's own node: exercised by every compose


def _listed_groups(primary: str) -> set[str]:
    """Groups in the primary's defaults list, and in base's when the primary includes base."""
    path = CONFIG_DIR / (f"{primary}/train.yaml" if primary in PHASES else f"{primary}.yaml")
    groups = set()
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, str) and entry == "base" and primary != "base":
            groups |= _listed_groups("base")
        elif not isinstance(entry, str):
            groups |= {str(k).split("@")[0].removeprefix("override ").lstrip("/") for k in entry}
    return groups


def _group_options():
    """(primary, group, option) for every group option file: phase groups with their phase, shared groups with
    every primary."""
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONFIG_DIR)
        if rel.parts[0] in SKIP_GROUPS or rel.name == "train.yaml" or len(rel.parts) == 1:
            continue
        if rel.parts[0] in PHASES:
            owners, group = [rel.parts[0]], "/".join(rel.parts[1:-1])
        else:
            owners, group = PRIMARIES, "/".join(rel.parts[:-1])
        for primary in owners:
            yield pytest.param(primary, group, path.stem, id=f"{primary}:{group}={path.stem}")


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_configs_compose_and_resolve(primary):
    cfg = compose(primary)
    OmegaConf.resolve(cfg)
    assert Path(cfg.paths.root_dir) == CONFIG_DIR.parent


@pytest.mark.parametrize("primary,group,option", list(_group_options()))
def test_every_group_option_composes(primary, group, option):
    # A group the primary lists in its defaults is selected with `group=option`, any other with `+group=option`.
    override = f"{group}={option}" if group in _listed_groups(primary) else f"+{group}={option}"
    cfg = compose(primary, [override])
    OmegaConf.resolve(cfg)


def test_unknown_override_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose("base", ["logger=wandb"])


def test_debug_fast_dev_run_turns_tracking_off():
    cfg = compose("base", ["+debug=fast_dev_run"])
    assert cfg.logger.backend == "none" and cfg.loop.max_steps == 2


def test_null_is_accepted_for_optional_settings_but_a_word_is_not_a_number():
    from common.config import UserError, check_overrides

    assert check_overrides("phase2", ["eval.max_batches=null"]).eval.max_batches is None
    with pytest.raises(UserError, match="must be a number"):
        check_overrides("phase2", ["eval.max_batches=many"])


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_slurm_launcher_config_composes(phase):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from common.config import config_location

    folder, name = config_location(phase)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        cfg = hydra_compose(
            config_name=name,
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)


def test_new_keys_are_taken_only_where_something_reads_them():
    from common.config import UserError, check_overrides

    with pytest.raises(UserError, match=r"\+lamda=0.05 adds a key that nothing reads \(did you mean lmbda\?\)"):
        check_overrides("phase1", ["+lamda=0.05"])
    with pytest.raises(UserError, match=r"Could not override 'lamda': no such key \(did you mean lmbda\?\)"):
        check_overrides("phase1", ["lamda=0.05"])
    cfg = check_overrides("phase2", ["+model.overrides.d_model=64", "+logger.tags.owner=me"])  # free-form mappings
    assert cfg.model.overrides.d_model == 64 and cfg.logger.tags.owner == "me"
    with pytest.raises(UserError, match="optim.lr=inf must be a finite number"):
        check_overrides("phase1", ["optim.lr=inf"])
    with pytest.raises(UserError, match=r"~lmbda removes lmbda, which the run reads: set it instead"):
        check_overrides("phase1", ["~lmbda"])


def test_every_value_of_a_multirun_sweep_is_checked():
    from common.config import UserError, check_sweep_overrides

    check_sweep_overrides("phase1", ["optim=adam,balanced", "lmbda=0.001,0.01", "optim.lr=interval(1e-5,1e-3)"])
    with pytest.raises(UserError, match="lmbda='abc' must be a number"):
        check_sweep_overrides("phase1", ["optim=adam,balanced", "lmbda=0.001,abc"])
    with pytest.raises(UserError, match="optim.gamma"):  # a key of one option only, with the other chosen first
        check_sweep_overrides("phase1", ["optim=adam,balanced", "optim.gamma=0.003"])


def test_ctrl_c_outside_the_training_steps_exits_130_without_a_traceback(capsys):
    from common.config import run_guarded

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_guarded(interrupted)
    assert stop.value.code == 130 and "interrupted (Ctrl-C)" in capsys.readouterr().err
