"""Hydra glue shared by every entry point: the config folder, resolvers, composing without `@hydra.main`
(tests, sweeps), the run folder, and the CLI wrapper that turns user mistakes into one-line errors."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "experiments"


def run_stamp() -> str:
    """A run folder's name: date, time to the microsecond and a random suffix, so runs started together (a
    sweep's workers, a job array) never share a folder. The ranks of one torchrun job share the launcher's id."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if job and job != "none":
        return f"{datetime.now():%Y-%m-%d}_torchrun-{job[:12]}"
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S_%f}_{os.urandom(3).hex()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)


register_resolvers()


def config_location(name: str) -> tuple[Path, str]:
    """(folder, config name) of a primary config: a phase ("phase1") is experiments/phase1/train.yaml, whose
    groups (model, data, optim, ...) sit beside it; anything else is experiments/<name>.yaml. Phase configs
    reach the shared groups (logger, debug, paths) through `hydra.searchpath`."""
    if (CONFIG_DIR / name / "train.yaml").is_file():
        return CONFIG_DIR / name, "train"
    if (CONFIG_DIR / f"{name}.yaml").is_file():
        return CONFIG_DIR, name
    raise ValueError(f"no config named {name!r} under {CONFIG_DIR}")


def compose(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a primary config with Hydra overrides, as `python -m <phase>.train k=v` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    folder, config_name = config_location(name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (what checkpoints and MLflow store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def run_dir(cfg: DictConfig) -> Path:
    """This run's output folder: Hydra's under `@hydra.main`, else outputs/<task>/<timestamp> (sweeps, tests).
    Under torchrun every rank gets rank 0's folder: one folder per run, not per rank."""
    import torch.distributed as dist
    from hydra.core.hydra_config import HydraConfig

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if HydraConfig.initialized():  # Hydra made it, named by run_stamp
        folder = Path(HydraConfig.get().runtime.output_dir)
    elif not distributed or dist.get_rank() == 0:
        folder = _new_folder(Path(cfg.paths.output_root) / cfg.task_name)
    else:
        folder = Path()  # rank 0's, broadcast below
    if distributed:
        shared = [str(folder)]
        dist.broadcast_object_list(shared, src=0)
        folder = Path(shared[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _new_folder(parent: Path) -> Path:
    """A folder no other run has: created exclusively, a new name drawn on a collision."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / run_stamp()
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


class UserError(Exception):
    """A mistake in the user's input (path, override, value). The CLI prints it on one line, no traceback."""


# Errors that come from bad input rather than bugs: shown as one line and exit status 2.
def _user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from common.checkpoint import CheckpointError, DiskFullError
    from common.loop import NonFiniteLossError  # a diverged run: its message names the fix
    from common.tracking import TrackingUnavailableError

    return (
        UserError,
        CheckpointError,
        DiskFullError,
        OSError,  # paths and permissions: a folder given for a file, a read-only folder, a missing file
        ValueError,
        HydraException,
        OmegaConfBaseException,
        NonFiniteLossError,
        TrackingUnavailableError,
    )


def _is_group_selection(name: str, key: str) -> bool:
    """`optim=balanced`, `hydra/launcher=slurm`, `debug=overfit`: the key names a config group (a folder)."""
    folder, _ = config_location(name)
    return "/" in key or "@" in key or any((root / key).is_dir() for root in (folder, CONFIG_DIR))


def check_overrides(name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose `name` with the command line's overrides and check each value override against the type of the
    value it replaces (a number stays a number, a flag a flag). Raises UserError with a one-line message.

    The value an override replaces is read from the config composed with the command line's group selections
    alone, so a key that exists only under a chosen option (`optim=balanced optim.gamma=0.003`) is known."""
    from hydra.errors import HydraException

    try:
        cfg = compose(name, overrides)
    except HydraException as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        message = lines[0]
        header = next((i for i, ln in enumerate(lines) if ln.startswith("Available options")), None)
        if header is not None:  # an unknown group option: list the known ones
            start = header + 1
            known = [ln for ln in lines[start:] if not ln.startswith(("Config search path", "provider="))]
            message += f" (available: {', '.join(known)})"
        elif lines[0].startswith("Could not override"):  # not Hydra's hint (+key=...): a new key nothing reads
            unknown = lines[0].split("'")[1] if lines[0].count("'") >= 2 else ""
            message = f"{message.rstrip('.')}: no such key{_closest_key(compose(name, []), unknown)}"
        raise UserError(message) from None
    keys = [override.partition("=")[0] for override in overrides]
    selections = [o for o, key in zip(overrides, keys) if _is_group_selection(name, key.lstrip("+~"))]
    defaults = compose(name, selections)
    for override, key in zip(overrides, keys):
        if key.startswith("~") and override not in selections and not key.startswith("~hydra."):
            raise UserError(f"{override} removes {key[1:]}, which the run reads: set it instead ({key[1:]}=...)")
        if override in selections or key.startswith("~"):
            continue  # a group or Hydra's own setting
        if key.startswith("+") and not key.startswith("++"):
            _check_new_key(defaults, override, key[1:])
            continue
        key = key.lstrip("+")
        before = OmegaConf.select(defaults, key, default=None)
        if before is None or OmegaConf.is_config(before):
            continue  # a null default, or a whole node
        _check_type(key, before, OmegaConf.select(cfg, key))
    return cfg


def check_sweep_overrides(name: str, overrides: Sequence[str]) -> None:
    """check_overrides for a multirun's command line: every value of every sweep (lmbda=0.1,abc) is checked,
    each beside the first value of the others. Interval sweeps are a sweeper's to sample and are left alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    values: list[list[str]] = []  # per override, the single overrides it stands for
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            values.append([override.input_line])
            continue
        try:
            values.append([f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()])
        except HydraException:  # an interval or glob sweep: the sweeper's to expand, not enumerable here
            continue
    first = [options[0] for options in values]
    check_overrides(name, first)
    for i, options in enumerate(values):
        for option in options[1:]:
            check_overrides(name, [*first[:i], option, *first[i + 1 :]])


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not OmegaConf.is_dict(node):
        return [prefix] if prefix else []
    found = [prefix] if prefix else []
    for key in node.keys():
        found += _dotted_keys(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
    return found


def _closest_key(cfg: DictConfig, key: str) -> str:
    import difflib

    near = difflib.get_close_matches(key, _dotted_keys(cfg), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def _check_new_key(defaults: DictConfig, override: str, key: str) -> None:
    """`+key=value` adds a key. Only a free-form mapping (logger.tags, model.overrides: empty by default) or
    Hydra's own settings take new keys; anywhere else nothing reads it, and a typo would be trained past."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(defaults, parent, default=None) if parent else defaults
    if key.startswith("hydra.") or OmegaConf.select(defaults, key, default=None) is not None:
        return
    if parent and OmegaConf.is_dict(node) and len(node) == 0:
        return
    raise UserError(f"{override} adds a key that nothing reads{_closest_key(defaults, key)}")


def positive_int(text: str) -> int:
    """argparse type for counts and lengths: `--batch-size 0` is refused by argparse itself (exit 2, one line)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def require_positive(cfg: DictConfig, *keys: str) -> None:
    """Sizes a run divides by or batches with: 0 or less is refused by name before anything is built."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{key}={value!r} must be a whole number >= 1")


def _check_type(key: str, default: Any, value: Any) -> None:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if value is None:
        return  # null: the documented "off / whole / default" of optional settings (eval.max_batches=null)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false")
    if number(default) and not number(value):
        raise UserError(f"{key}={value!r} must be a number (default {default!r})")
    if number(value) and not math.isfinite(value) and math.isfinite(default):
        raise UserError(f"{key}={value!r} must be a finite number (default {default!r})")
    if (
        isinstance(default, int)
        and not isinstance(default, bool)
        and isinstance(value, float)
        and not value.is_integer()
    ):
        raise UserError(f"{key}={value!r} must be a whole number (default {default!r})")


def main(name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """`@main("phase1")` on `train(cfg)`: a `python -m` entry point with Hydra's CLI, which ends by printing
    the run's closing lines (common/run_summary.py).

    Bad input prints `error: <one line>` and exits 2: an unknown override or group option, a value of the
    wrong type (checked before anything runs), and what train() meets while running (a missing path, a wrong
    value, a broken checkpoint). Genuine bugs still show their traceback."""

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[], None]:
        import hydra
        from hydra._internal.utils import get_args_parser

        @functools.wraps(fn)
        def guarded(cfg: DictConfig) -> Any:
            with copied_to_run_log():
                try:
                    result = fn(cfg)
                except _user_error_types() as err:
                    _exit_with(err)
                except KeyboardInterrupt:  # the steps checkpoint on Ctrl-C; this is one before or after them
                    _interrupted()
                if isinstance(result, dict) and "global_step" in result and os.environ.get("RANK", "0") == "0":
                    from common.run_summary import closing_lines

                    print("\n".join(closing_lines(result)))
                stopped_by = int(result.get("stop_signal", 0)) if isinstance(result, dict) else 0
                if stopped_by:  # checkpointed and stopped by SIGINT/SIGTERM: say so to the shell and the scheduler
                    print(f"stopped by signal {stopped_by} after a checkpoint: resume=<its last.pt> continues it")
                    sys.exit(128 + stopped_by)
                return result

        folder, config_name = config_location(name)
        hydra_entry = hydra.main(config_path=str(folder), config_name=config_name, version_base="1.3")(guarded)

        def entry() -> None:
            if int(os.environ.get("RANK", "0")) > 0:  # a torchrun worker: rank 0's folder is the run's (run_dir)
                sys.argv.append("hydra.output_subdir=null")
                if not any(a.startswith("hydra.run.dir=") for a in sys.argv):
                    sys.argv.append(f"hydra.run.dir={tempfile.mkdtemp(prefix='hydra-rank')}")
            args = get_args_parser().parse_intermixed_args(sys.argv[1:])  # Hydra's own flags and overrides
            modes = [f for f, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                     ("--info", args.info)) if on]  # fmt: skip
            if len(modes) > 1:  # Hydra itself answers with a traceback
                _exit_with(UserError(f"{' and '.join(modes)} do not go together: give one of them"))
            _check_run_folder(args.overrides)
            if not (args.config_name or args.config_path or args.config_dir):  # another primary has other keys
                try:
                    (check_sweep_overrides if args.multirun else check_overrides)(name, args.overrides)
                except _user_error_types() as err:
                    _exit_with(err)
            hydra_entry()

        return entry

    return wrap


class _Tee:
    """A text stream that also writes to the run's log file, less a progress bar's redraws (text with a carriage
    return), which would fill the file with one line per redraw."""

    def __init__(self, terminal, log):
        self.terminal, self.log, self._after_redraw = terminal, log, False

    def write(self, text: str) -> int:
        if "\r" in text:
            self._after_redraw = True
        elif not (self._after_redraw and text == "\n"):  # the newline that closes a bar
            self.log.write(text)
            self.log.flush()
            self._after_redraw = False
        else:
            self._after_redraw = False
        return self.terminal.write(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding: the terminal's
        return getattr(self.terminal, name)


@contextlib.contextmanager
def copied_to_run_log():
    """What the run prints (notes, warnings, its summary, an `error:` line) also goes to the log file Hydra opened
    in the run folder (train.log); without one (hydra/job_logging=disabled) nothing changes."""
    import logging

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        yield
        return
    log = open(files[0].baseFilename, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        log.close()


def _check_run_folder(overrides: Sequence[str]) -> None:
    """hydra.run.dir as given, before Hydra writes into it: Hydra's own mkdir of a file path ends in a traceback,
    and a folder of another run would have its config replaced."""
    from common.checkpoint import OutputPathError, check_folder, check_unclaimed

    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    for override in overrides:
        if override.startswith("hydra.run.dir="):
            folder = override.split("=", 1)[1]
            try:
                if not folder.strip():  # an unset shell variable: the run would write into the current folder
                    raise OutputPathError("hydra.run.dir is empty: give the run's folder")
                check_folder(folder, "hydra.run.dir")
                check_unclaimed(folder, "hydra.run.dir", resume)
                if resume is None and (Path(folder) / "config.yaml").exists():
                    raise OutputPathError(
                        f"hydra.run.dir={folder} holds a config.yaml already (another run's?): choose a new folder, "
                        "or resume=<that folder> to continue the run it belongs to"
                    )
            except OutputPathError as err:
                _exit_with(err)


def error_line(err: BaseException) -> str:
    """An exception as the one line a CLI prints: its message's first line, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _exit_with(err: BaseException) -> None:
    print(f"error: {error_line(err)}", file=sys.stderr)
    sys.exit(2)


def _interrupted() -> None:
    print("interrupted (Ctrl-C): files already written are kept", file=sys.stderr)
    sys.exit(130)  # 128 + SIGINT, as a shell reports it


def run_guarded(body: Callable[[], Any]) -> int:
    """For argparse CLIs (evaluate, generate, ...): run `body`; bad input -> `error: <one line>`, status 2."""
    try:
        body()
    except _user_error_types() as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _interrupted()
    return 0
