"""The one training loop both phases run. Phase-specific work plugs in through `StepHooks`.

Per step: hooks.compute_loss -> (non-finite? skip) -> hooks.backward -> clip (non-finite grad? skip) ->
hooks.optimizer_step -> scheduler -> hooks.after_step. Around it: a progress bar with loss and throughput,
buffered metric logging, periodic evaluation (best checkpoint by `monitor`), periodic checkpoints, exact
resume (model, optimizer, scheduler, data position, RNG) and SIGINT/SIGTERM -> checkpoint, then return.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from common import runtime
from common.checkpoint import CheckpointManager, load_model_state
from common.tracking import Logger, NullLogger


@dataclass
class LoopConfig:
    max_steps: int = 1000
    log_every: int = 10  # steps between metric points (each scalar averaged over the steps that returned it)
    eval_every: int = 0  # 0: evaluate only at the end
    ckpt_every: int = 0  # 0: checkpoint only at the end (and when stopped by a signal)
    clip_grad_norm: float = 0.0  # 0 disables clipping; the norm is still measured and logged
    max_nonfinite_in_row: int = 20  # abort after this many consecutive skipped steps: training has diverged
    monitor: str = "val/loss"  # validation metric that picks best.pt (lower is better); never a test metric
    progress: bool = True


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per logged point


class StepHooks:
    """Override `compute_loss`; the rest have working defaults.

    `compute_loss(batch)` returns {"loss": scalar tensor, other scalar tensors or floats to log}."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def compute_loss(self, batch: Any) -> dict[str, Any]:
        raise NotImplementedError

    def backward(self, out: dict[str, Any]) -> None:
        out["loss"].backward()

    def optimizer_step(self, out: dict[str, Any]) -> None:
        self.optimizer.step()

    def after_step(self, batch: Any, out: dict[str, Any]) -> dict[str, float]:
        """Work after the parameter update (e.g. the Balanced task-weight update); returns scalars to log."""
        return {}

    def evaluate(self) -> dict[str, float]:
        """Metrics on the validation data (model selection: `monitor` picks best.pt among these)."""
        return {}

    def test(self) -> dict[str, float]:
        """Metrics on the test data, once, after the last step: the held-out numbers a run reports."""
        return {}

    def items_in(self, batch: Any) -> int:
        """How many items (tokens, images) a batch holds, for throughput."""
        first = batch[0] if isinstance(batch, list | tuple) else batch
        return int(first.shape[0]) if hasattr(first, "shape") else 1

    def extra_state(self) -> dict[str, Any]:
        """Phase-specific checkpoint content (e.g. a tokenizer as JSON text)."""
        return {}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Loop:
    def __init__(
        self,
        cfg: LoopConfig,
        hooks: StepHooks,
        batches: Iterator,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        logger: Logger | None = None,
        checkpoints: CheckpointManager | None = None,
        config: Mapping[str, Any] | None = None,
        kind: str | None = None,
        is_main: bool = True,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
    ):
        self.cfg, self.hooks, self.batches, self.scheduler = cfg, hooks, batches, scheduler
        self.model, self.optimizer = hooks.model, hooks.optimizer
        self.logger = logger or NullLogger()
        self.checkpoints = checkpoints if is_main else None
        self.config, self.kind, self.is_main, self.on_log = dict(config or {}), kind, is_main, on_log
        self.state = TrainState()

    # ------------------------------------------------------------------------------------------ checkpoints
    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_state_dict": unwrap(self.model).state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict() if self.scheduler else {},
            "epoch": self.epoch,
            "global_step": self.state.global_step,
            "best_val_loss": self.state.best_val_loss,
            "skipped_steps": self.state.skipped_steps,
            "data_state": self.batches.state_dict() if hasattr(self.batches, "state_dict") else {},
            "mlflow_run_id": self.logger.run_id or "",
            "tracking_uri": getattr(self.logger, "tracking_uri", None) or "",  # where that run is (releases)
            "config": self.config,
            "rng_state": runtime.rng_state(),
            "history": self.state.history,
            **self.hooks.extra_state(),
        }

    def save(self, is_best: bool = False) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(self.payload(), self.state.global_step, is_best=is_best)

    def resume(self, ckpt: Mapping[str, Any], source: str = "to resume from") -> None:
        """Restore everything a checkpoint holds. It comes loaded (common.run reads the file once, for the
        tracking run id and the phase's own extras too); `source` names it in errors."""
        load_model_state(unwrap(self.model), ckpt["model_state_dict"], source)
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        if self.scheduler and ckpt["scheduler_state_dict"]:
            self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        if hasattr(self.batches, "load_state_dict") and ckpt.get("data_state"):
            self.batches.load_state_dict(ckpt["data_state"])
        self.state = TrainState(
            global_step=int(ckpt["global_step"]),
            epoch=int(ckpt["epoch"]),
            best_val_loss=float(ckpt["best_val_loss"]),
            skipped_steps=int(ckpt.get("skipped_steps", 0)),
            history=list(ckpt.get("history", [])),
        )
        runtime.set_rng_state(ckpt["rng_state"])

    @property
    def epoch(self) -> int:
        """The data's current epoch (batches that keep no position count as one endless epoch)."""
        return int(self.batches.state_dict()["epoch"]) if hasattr(self.batches, "state_dict") else 0

    # ------------------------------------------------------------------------------------------ one step
    def _params(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_step(self, batch: Any) -> dict[str, float] | None:
        """One optimisation step; None when it was skipped for a non-finite loss or gradient."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.hooks.compute_loss(batch)
        if not torch.isfinite(out["loss"].detach()).item():
            return None
        self.hooks.backward(out)
        max_norm = self.cfg.clip_grad_norm if self.cfg.clip_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params(), max_norm)
        if not torch.isfinite(grad_norm).item():
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.hooks.optimizer_step(out)
        if self.scheduler is not None:
            self.scheduler.step()
        scalars = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
        scalars["grad_norm"] = float(grad_norm)
        scalars.update(self.hooks.after_step(batch, out))
        return scalars

    # ------------------------------------------------------------------------------------------ the loop
    def fit(
        self,
        resumed: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_dir=None,
        resumed_from: str = "to resume from",
    ) -> dict[str, float]:
        """Resume from a loaded checkpoint (same MLflow run) or record a new run's config and tags, run, and
        close the run with its status: FINISHED, KILLED (stopped by a signal) or FAILED (an exception, re-raised)."""
        if resumed:
            self.resume(resumed, resumed_from)
            if self.state.global_step >= self.cfg.max_steps and self.is_main:
                print(
                    f"note: the resumed run is finished (step {self.state.global_step} of loop.max_steps="
                    f"{self.cfg.max_steps}); no steps are trained: raise loop.max_steps to train on",
                    file=sys.stderr,
                )
        else:
            self.logger.log_params(self.config)
            self.logger.set_tags(dict(tags or {}))
        if run_dir is not None and self.is_main:
            self._write_config(run_dir, as_artifact=not resumed)
        status = "FAILED"
        try:
            summary = self.run()
            status = "KILLED" if summary["interrupted"] else "FINISHED"
            return summary
        finally:
            self.logger.close(status=status)

    def _write_config(self, run_dir, as_artifact: bool) -> None:
        """The resolved config as <run folder>/config.yaml: a new run's first artifact; a resumed run writes it
        into a folder that has none (a new Hydra folder), never over the one its folder already holds."""
        from pathlib import Path

        import yaml

        path = Path(run_dir) / "config.yaml"
        if as_artifact or not path.exists():
            path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        if as_artifact:
            self.logger.log_artifact(path)

    def run(self) -> dict[str, float]:
        cfg, state = self.cfg, self.state
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: a scalar that only some steps return is averaged over those
        items, in_a_row = 0, 0
        last_eval: dict[str, float] = {}
        tick = time.perf_counter()
        bar = _progress(cfg, state.global_step, self.is_main)
        with runtime.StopRequest() as stop:
            while state.global_step < cfg.max_steps and not stop:
                batch = next(self.batches)
                scalars = self.train_step(batch)
                state.global_step += 1
                if scalars is None:
                    state.skipped_steps += 1
                    in_a_row += 1
                    if in_a_row >= cfg.max_nonfinite_in_row:
                        raise NonFiniteLossError(
                            f"{in_a_row} consecutive steps had a non-finite loss or gradient (step "
                            f"{state.global_step}); lower the learning rate or enable loop.clip_grad_norm"
                        )
                else:
                    in_a_row = 0
                    for k, v in scalars.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                items += self.hooks.items_in(batch)
                bar.update(1)

                if state.global_step % cfg.log_every == 0 or state.global_step == cfg.max_steps:
                    elapsed = time.perf_counter() - tick
                    point = {f"train/{k}": v / counts[k] for k, v in sums.items()}
                    point.update(self._point_extras(items / elapsed))
                    self._log(point)
                    bar.set_postfix(
                        loss=f"{point.get('train/loss', float('nan')):.4g}", items_s=f"{items / elapsed:.3g}"
                    )
                    sums, counts, items, tick = {}, {}, 0, time.perf_counter()

                is_eval = cfg.eval_every > 0 and state.global_step % cfg.eval_every == 0
                if is_eval or state.global_step == cfg.max_steps:
                    last_eval = self._evaluate()
                elif cfg.ckpt_every > 0 and state.global_step % cfg.ckpt_every == 0:
                    self.save()
        bar.close()
        if stop:
            self.save()
        else:
            last_eval = {**(last_eval or self._last_evaluation()), **self._held_out(self.hooks.test)}
        self.logger.flush()
        summary = {f"final/{k}": v for k, v in last_eval.items()}
        summary.update(
            global_step=float(state.global_step),
            skipped_steps=float(state.skipped_steps),
            best_val_loss=state.best_val_loss,
            interrupted=float(bool(stop)),
            stop_signal=float(stop.received or 0),  # the CLI exits 128 + this, as a process killed by it would
        )
        return summary

    def _point_extras(self, throughput: float) -> dict[str, float]:
        extras = {
            "train/skipped_steps": float(self.state.skipped_steps),
            "train/items_per_s": throughput,
        }
        if self.scheduler is not None or self.optimizer.param_groups:
            extras["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            extras["train/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return extras

    def _log(self, point: dict[str, float]) -> None:
        self.logger.log_metrics(point, step=self.state.global_step)
        self.state.history.append({"step": float(self.state.global_step), **point})
        if self.on_log is not None:  # e.g. an Optuna trial reporting intermediate values (may raise to prune)
            self.on_log(self.state.global_step, point)

    def _held_out(self, evaluate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run an evaluation hook in eval mode and log what it returns."""
        # Evaluation must not move the training RNGs, or a run's curve would depend on when it evaluated.
        rng = runtime.rng_state()
        self.model.eval()
        with torch.no_grad():
            metrics = evaluate()
        self.model.train()
        runtime.set_rng_state(rng)
        if metrics:
            self._log(metrics)
        return metrics

    def _last_evaluation(self) -> dict[str, float]:
        """A resumed run that was already finished trains nothing: its final validation numbers are those of its
        last evaluation, from the history it carries (a sweep's retry of a finished trial needs them)."""
        evaluations = [h for h in self.state.history if self.cfg.monitor in h]
        return {k: v for k, v in evaluations[-1].items() if k != "step"} if evaluations else {}

    def _evaluate(self) -> dict[str, float]:
        metrics = self._held_out(self.hooks.evaluate)
        value = metrics.get(self.cfg.monitor)
        is_best = value is not None and value < self.state.best_val_loss
        if is_best:
            self.state.best_val_loss = float(value)
        self.save(is_best=is_best)
        if metrics and value is None:  # a typo would leave the run without best.pt, silently
            known = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
            raise ValueError(f"loop.monitor={self.cfg.monitor} is not a metric the evaluation reports ({known})")
        return metrics


def _progress(cfg: LoopConfig, start: int, is_main: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.max_steps,
        initial=start,
        disable=not (cfg.progress and is_main),
        dynamic_ncols=True,
        desc="train",
        mininterval=1.0,
    )


def loop_config(values: Mapping[str, Any]) -> LoopConfig:
    """LoopConfig from a config mapping, naming any unknown key."""
    known = set(asdict(LoopConfig()))
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown loop option(s) {sorted(unknown)}; known: {sorted(known)}")
    cfg = LoopConfig(**values)
    for key, least in (("max_steps", 1), ("log_every", 1), ("eval_every", 0), ("ckpt_every", 0),
                       ("max_nonfinite_in_row", 1), ("clip_grad_norm", 0)):  # fmt: skip
        value = getattr(cfg, key)
        if not value >= least:  # NaN too, which every comparison fails
            why = f"it must be >= {least}" + (" (a run of no steps would do nothing)" if key == "max_steps" else "")
            raise ValueError(f"loop.{key}={value}: {why}" + ("; 0 turns it off" if least == 0 else ""))
    if cfg.monitor.startswith("test/"):
        raise ValueError(
            f"loop.monitor={cfg.monitor} would pick checkpoints on the test data; monitor a "
            "validation metric (val/loss): the test split is for final numbers only"
        )
    return cfg
