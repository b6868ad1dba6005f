"""One training run, the same for every phase. A phase builds its own parts (`RunParts`); `execute` does the rest:

    loop options -> process group, seed, device -> resume checkpoint (read once) -> phase.build ->
    DDP -> hooks -> schedule -> batches (with overfit_batches) -> tracking run -> run folder, checkpoints ->
    Loop.fit -> phase.after_fit on rank 0

so resume, tracking, checkpoints, the schedule and the debug knobs (`debug=overfit`, `fast_dev_run`, `tiny`)
mean the same in every phase. A phase's `train(cfg)` is its build function and one call:

    def train(cfg, on_log=None):
        return run.execute(cfg, "phase1", build_parts, on_log)
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from common import config as configs
from common import runtime
from common.batches import EpochBatches
from common.checkpoint import CheckpointManager, check_unclaimed, load_checkpoint, resolve_resume, sha256
from common.loop import Loop, StepHooks, loop_config
from common.schedulers import build_scheduler
from common.tracking import create_logger


@dataclass
class RunParts:
    """What a phase builds for one run; everything else is execute()'s.

    model       initialised and on the run's device, not yet wrapped: execute() wraps it for DDP under torchrun
    optimizer   over `model`'s parameters (DDP keeps the same tensors, so it may be built before the wrap)
    hooks       the phase's StepHooks class with its own arguments bound (functools.partial); execute() calls
                it with (model, optimizer) once the model is wrapped, since the hooks must run the wrapped one
    train_set   the training samples; execute() batches and shards them, and keeps the first ones for
                `overfit_batches`
    batch_size  per rank: the global batch is world_size x batch_size
    tags        a new tracking run's tags besides `phase` and `run_dir`
    num_workers DataLoader worker processes
    d_model     the width the noam schedule scales by (None: a model without one)
    after_fit   called on rank 0 with the loop and the run folder once the loop returned (e.g. a history file)
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    hooks: Callable[[nn.Module, torch.optim.Optimizer], StepHooks]
    train_set: Dataset
    batch_size: int
    tags: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    d_model: int | None = None
    after_fit: Callable[[Loop, Path], None] | None = None


@dataclass(frozen=True)
class Objective:
    """The config keys (dotted, whole subtrees) that define what a run minimises, less those that only say how
    it is computed (a kernel choice, a chunk length): a resume may not change the first kind silently."""

    keys: tuple[str, ...] = ("model", "loop.monitor")
    ignore: tuple[str, ...] = ()


# build(cfg, device, resumed): `resumed` is the resume checkpoint, loaded, or None for a fresh run.
BuildParts = Callable[[DictConfig, torch.device, dict[str, Any] | None], RunParts]


def execute(
    cfg: DictConfig,
    kind: str,
    build: BuildParts,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    objective: Objective = Objective(),
) -> dict[str, Any]:
    """Train per `cfg` with the parts `build` makes; returns the loop's summary (the final metrics) and where the
    run is (run_dir, checkpoint_dir, and mlflow_run_id, mlflow_experiment_id, tracking_uri when tracked).

    `kind` ("phase1") marks the checkpoints, and a resume checkpoint of another kind is refused. `on_log(step,
    metrics)` sees every logged point (sweeps report intermediate values through it). A resume that changes
    the `objective` is refused unless `resume_allow_changes=true`, which restarts best.pt under the new one.

    Nothing of the run outlives the call: OmegaConf answers `cfg.get(missing key)` by raising and catching an
    error inside, and that error, its traceback and the frames it holds form a cycle whose frames reach this
    run's own (through f_back), so its model, optimizer and batches. Reference counting never frees a cycle
    and Python's collector runs by object counts, not by GPU memory, so the next run in the process (a sweep's
    next trial) would start beside the last one's tensors. The cycles are collected when the run ends, and
    before a run starts (what a failed run's error held until its caller let go of it)."""
    gc.collect()
    try:
        return _execute(cfg, kind, build, on_log, objective)
    finally:
        gc.collect()


def _execute(cfg, kind, build, on_log, objective) -> dict[str, Any]:
    loop_cfg = loop_config(cfg.loop)  # a bad loop option or a missing value is refused before anything is created
    lr = cfg.get("optim", {}).get("lr", 1.0)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):  # 0 would train nothing, and exit 0
        raise configs.UserError(f"optim.lr={lr!r} must be a number > 0")
    plain = configs.to_plain(cfg)
    dist = runtime.init_distributed()
    with contextlib.ExitStack() as stack:
        stack.callback(runtime.shutdown_distributed)
        if cfg.get("cpu_threads"):  # jobs sharing a CPU run best with one thread each
            torch.set_num_threads(int(cfg.cpu_threads))
        runtime.seed_everything(cfg.seed + dist.rank)
        device = runtime.pick_device(cfg.device)
        resume_from = resolve_resume(cfg.resume)
        if cfg.checkpoint.dir:  # another run's checkpoints are never written over
            check_unclaimed(cfg.checkpoint.dir, "checkpoint.dir", resume_from)
        resumed = load_checkpoint(resume_from, kind=kind) if resume_from else None
        changes = _objective_changes(resumed, plain, objective, resume_from, cfg.get("resume_allow_changes"))
        if changes:
            resumed = {**resumed, "best_val_loss": math.inf}  # the old best was measured on another objective
        parts = build(cfg, device, resumed)
        model = _distribute(parts.model, dist, device)
        hooks = parts.hooks(model, parts.optimizer)
        scheduler = _schedule(cfg, parts)
        batches = _batches(cfg, parts, dist)
        folder = configs.run_dir(cfg)
        checkpoints = CheckpointManager(  # the folder is claimed for this run until it ends
            cfg.checkpoint.dir or folder / "checkpoints", cfg.checkpoint.keep_last, claim=dist.is_main
        )
        stack.callback(checkpoints.release)
        tags = {"phase": kind, **parts.tags, "run_dir": folder, "device": runtime.device_name(device)}
        if cfg.get("init_from"):  # which weights exactly: a file of that name may be replaced later
            tags["init_from_sha256"] = sha256(cfg.init_from)
        # created last: a mistake found while building leaves no tracking run behind (nor reopens a finished one)
        run_id = (resumed or {}).get("mlflow_run_id") or None
        logger = create_logger(cfg.logger, run_id=run_id, is_main=dist.is_main, device_type=device.type)
        loop = Loop(
            loop_cfg,
            hooks,
            batches,
            scheduler,
            logger,
            checkpoints,
            config=plain,
            kind=kind,
            is_main=dist.is_main,
            on_log=on_log,
        )
        if changes:  # MLflow keeps a param's first value: the new values go on the run as tags
            step = resumed.get("global_step", 0)
            logger.set_tags(
                {f"resume_changed.{k}": f"{old} -> {new} (at step {step})" for k, (old, new) in changes.items()}
            )
        summary = loop.fit(resumed, tags=tags, run_dir=folder, resumed_from=str(resume_from))
    if dist.is_main and parts.after_fit is not None:
        parts.after_fit(loop, folder)
    return {**summary, **_where(folder, checkpoints, logger, resume_from)}


def _where(folder: Path, checkpoints: CheckpointManager, logger, resume_from: Path | None) -> dict[str, str]:
    """Where the run left its files and its tracking run, for the CLI's closing lines and a sweep's trial."""
    kept = checkpoints.folder
    if checkpoints.latest() is None and resume_from is not None:  # a finished run resumed: it wrote nothing new
        kept = Path(resume_from).parent
    where = {"run_dir": str(folder), "checkpoint_dir": str(kept)}
    if logger.run_id:
        where.update(mlflow_run_id=logger.run_id, mlflow_experiment_id=logger.experiment_id,
                     tracking_uri=logger.tracking_uri)  # fmt: skip
    return where


def _objective_changes(
    resumed: dict[str, Any] | None,
    plain: dict[str, Any],
    objective: Objective,
    source: Path | None,
    allowed: bool | None,
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (checkpoint's value, this run's)} for the objective's settings that a resume changes.

    Refused (UserError) unless `allowed`: continuing under another lambda or model silently would mix two
    objectives in one curve, one best.pt and one MLflow run whose params still show the first."""
    if not resumed or not isinstance(resumed.get("config"), dict):
        return {}
    old, new = _leaves(resumed["config"], objective.keys), _leaves(plain, objective.keys)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in objective.ignore)
    changes = {k: (old.get(k), new.get(k)) for k in changed}
    if changes and not allowed:
        first, (was, now) = next(iter(changes.items()))
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise configs.UserError(
            f"resume: {source} was trained with {first}={was!r}, this run has {first}={now!r}{more}; "
            "set resume_allow_changes=true to continue under the new objective (best.pt restarts)"
        )
    if changes:
        print(f"note: resuming under a changed objective: {', '.join(changes)}; best.pt restarts", file=sys.stderr)
    return changes


def _leaves(config: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The leaves under each dotted key of a nested dict, by their dotted path."""
    found: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for name, sub in value.items():
                walk(f"{prefix}.{name}", sub)
        else:
            found[prefix] = value

    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            walk(key, node)
    return found


def _distribute(model: nn.Module, dist: runtime.DistInfo, device: torch.device) -> nn.Module:
    if not dist.enabled:
        return model
    device_ids = [dist.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _schedule(cfg: DictConfig, parts: RunParts) -> torch.optim.lr_scheduler.LambdaLR:
    """The `schedule` block (name, warmup_steps, min_lr) over the loop's steps; lr itself is the optimizer's."""
    schedule, lr = cfg.schedule, cfg.optim.lr
    return build_scheduler(
        parts.optimizer,
        schedule.name,
        total_steps=cfg.loop.max_steps,
        warmup_steps=schedule.warmup_steps,
        min_ratio=schedule.min_lr / lr if lr else 0.0,
        d_model=parts.d_model,
    )


def _batches(cfg: DictConfig, parts: RunParts, dist: runtime.DistInfo) -> EpochBatches:
    train_set, overfit = parts.train_set, cfg.get("overfit_batches") or 0
    if overfit:  # debug=overfit: the first items only, the same batches every epoch
        count = min(len(train_set), overfit * parts.batch_size * dist.world_size)
        train_set = Subset(train_set, range(count))
    return EpochBatches(
        train_set,
        parts.batch_size,
        seed=cfg.seed,
        num_workers=parts.num_workers,
        rank=dist.rank,
        world_size=dist.world_size,
        replay_first_epoch=bool(overfit),
    )
