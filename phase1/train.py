"""Phase 1 training: HPCM with Adam or the Balanced R-D optimizer.

    python -m phase1.train model=tiny optim=balanced lmbda=0.0035 loop.max_steps=2000
    ./run_balanced.sh lmbda=0.0483          # the same, with the original code's defaults

`train(cfg) -> dict` is the only entry: the CLI, the run scripts, tests and Optuna trials all call it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from common import config as configs
from common import run, runtime
from common.checkpoint import write_atomically
from common.loop import Loop, StepHooks, unwrap
from common.optim import Balanced, capture_rng_state
from common.run import RunParts
from phase1.data import ImageCrops, RepeatedDataset, image_paths
from phase1.evaluate import evaluate_images
from phase1.loss import RateDistortionLoss, psnr

KIND = "phase1"
OBJECTIVE = run.Objective(keys=("lmbda", "loss_metric", "model", "loop.monitor"))


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, trained_steps: int | None = 0) -> torch.optim.Optimizer:
    """Adam or Balanced. Balanced's warm-up counts the codec's training steps: a codec that starts from trained
    weights (`trained_steps`, from init_from; None for official weights, trained to the end) has done that many."""
    params = [p for p in model.parameters() if p.requires_grad]
    common = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, **common)
    if cfg.name == "balanced":
        return Balanced(
            params,
            n_tasks=2,
            gamma=cfg.gamma,
            w_lr=cfg.w_lr,
            min_losses=list(cfg.min_losses),
            task_weight_update=cfg.task_weight_update,
            warmup_steps=0 if trained_steps is None else max(0, int(cfg.get("warmup_steps", 0)) - trained_steps),
            max_norm=0.0,  # the shared loop clips (loop.clip_grad_norm), once, for every optimizer
            **common,
        )
    raise ValueError(f"optim.name={cfg.name!r} is not one of: adam, balanced")


class CodecHooks(StepHooks):
    """The phase-1 step: R-D loss; with Balanced, FAMO-weighted backward and the task-weight update."""

    def __init__(
        self,
        model,
        optimizer,
        criterion: RateDistortionLoss,
        device,
        precision: str,
        val_paths: list[Path],
        test_paths: list[Path],
        real_bitstreams: bool,
        init_from_steps: int | None = 0,
    ):
        super().__init__(model, optimizer)
        self.init_from_steps = init_from_steps  # saved: the codec's training steps are these plus this run's
        self.criterion, self.device, self.precision = criterion, device, precision
        self.val_paths, self.test_paths, self.real_bitstreams = val_paths, test_paths, real_bitstreams
        self.balanced = isinstance(optimizer, Balanced)
        self._rng_before_forward: dict | None = None
        self._stepped_losses: torch.Tensor | None = None  # (distortion, rate) the last step was taken on
        self.test_images: dict[str, list] | None = None  # per-image test numbers, for a BD-rate interval

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with runtime.autocast(self.device, self.precision):
            out = self.model(x)
        return self.criterion(out, x)

    def compute_loss(self, batch: torch.Tensor) -> dict[str, Any]:
        x = batch.to(self.device, non_blocking=True)
        self._rng_before_forward = capture_rng_state() if self.balanced else None
        terms = self._forward(x)
        # one all-reduce under DDP: every rank sees (and FAMO weights) the global means; gradients stay local
        names = ("loss", "distortion", "bpp_loss", "mse_loss")
        terms.update(zip(names, runtime.globalize(torch.stack([terms[k] for k in names])).unbind()))
        terms["psnr"] = psnr(terms["mse_loss"].detach())
        terms["task_losses"] = torch.stack([terms["distortion"], terms["bpp_loss"]])
        return terms

    def backward(self, out: dict[str, Any]) -> None:
        if self.balanced:
            self.optimizer.backward_with_task_balancing(out["task_losses"])
        else:
            out["loss"].backward()

    def optimizer_step(self, out: dict[str, Any]) -> None:
        if self.balanced:
            self._stepped_losses = out.pop("task_losses").detach()
            self.optimizer.step(task_losses=self._stepped_losses)
        else:
            out.pop("task_losses")
            self.optimizer.step()

    def after_step(self, batch: torch.Tensor, out: dict[str, Any]) -> dict[str, float]:
        if not self.balanced:
            return {}
        # the weights this step's gradient had: distortion and rate as plain R-D training at effective_lambda
        w_distortion, w_rate = self.optimizer.gradient_weights(self._stepped_losses).tolist()
        if self.optimizer.task_weight_update == "second_forward" and self.optimizer.weighted:
            x = batch.to(self.device, non_blocking=True)

            def task_losses() -> torch.Tensor:
                terms = self._forward(x)
                return runtime.globalize(torch.stack([terms["distortion"], terms["bpp_loss"]]))

            self.optimizer.update_task_weights_replayed(task_losses, self._rng_before_forward)
        w = self.optimizer.task_weights.tolist()
        return {
            "task_weight_distortion": w[0],
            "task_weight_bpp": w[1],
            "effective_lambda": self.criterion.lmbda * w_distortion / w_rate,
        }

    def items_in(self, batch: torch.Tensor) -> int:
        return int(batch.shape[0])

    def extra_state(self) -> dict[str, Any]:
        return {"init_from_steps": self.init_from_steps}

    def evaluate(self) -> dict[str, float]:
        """val/* on the validation images (model selection); the test images are left for test()."""
        return self._evaluate_on(self.val_paths, "val")

    def test(self) -> dict[str, float]:
        """test/* on the test images, once, with the final weights."""
        return {**self._evaluate_on(self.test_paths, "test"), "test/images": float(len(self.test_paths))}

    def _evaluate_on(self, paths: list[Path], split: str) -> dict[str, float]:
        """The loss terms from the likelihoods (the original code's bpp_loss) and, with real bitstreams, real bytes."""
        model = unwrap(self.model)  # every rank evaluates the same weights on the same images
        if self.real_bitstreams:
            model.update(force=True)
        result = evaluate_images(model, paths, self.device, real=self.real_bitstreams, criterion=self.criterion)
        mean = result["mean"]
        if split == "test" and self.real_bitstreams:
            names = sorted(result["per_image"])
            self.test_images = {"images": names} | {
                f"{key}_per_image": [result["per_image"][n][metric] for n in names]
                for key, metric in (("bpp", "bpp"), ("psnr", "psnr-rgb"), ("mse", "mse"))
            }
        metrics = {
            f"{split}/loss": mean["loss"],
            f"{split}/distortion": mean["distortion"],
            f"{split}/bpp_loss": mean["bpp_loss"],
            f"{split}/psnr": mean["psnr-rgb"],
        }
        if self.real_bitstreams:
            metrics[f"{split}/bpp_real"] = mean["bpp"]
        if "ms-ssim-rgb" in mean:
            metrics[f"{split}/ms_ssim"] = mean["ms-ssim-rgb"]
        return metrics


def write_test_images(loop: Loop, folder: Path) -> None:
    """test_images.json in the run folder and the MLflow run: each test image's real bpp and PSNR, from which
    reports draw a paired bootstrap interval of the BD-rate (phase1.rd.bd_rate_bootstrap)."""
    per_image = loop.hooks.test_images
    if per_image is None:  # stopped before its test evaluation, or without real bitstreams
        return
    text = json.dumps(per_image, indent=1) + "\n"
    path = write_atomically(folder / "test_images.json", lambda tmp: Path(tmp).write_text(text))
    loop.logger.log_artifact(path)


def build_model(cfg_model: DictConfig) -> torch.nn.Module:
    from phase1.hpcm import build_hpcm

    return build_hpcm(cfg_model.name)


def _data(cfg: DictConfig):
    """Training crops, validation and test images: three disjoint sets (phase1.data.image_paths)."""
    source, root, val_count = cfg.data.source, cfg.data.root, cfg.data.get("val_count", 2)
    train_paths, val_paths, test_paths = (
        image_paths(source, root, split, val_count) for split in ("train", "val", "test")
    )
    if cfg.eval.max_images:
        val_paths, test_paths = val_paths[: cfg.eval.max_images], test_paths[: cfg.eval.max_images]
    crops = ImageCrops(train_paths, cfg.data.patch_size, name="train images", cache=cfg.data.get("cache", False))
    train_set = RepeatedDataset(crops, cfg.data.repeats) if cfg.data.repeats > 1 else crops
    return train_set, val_paths, test_paths


def _start_from(cfg: DictConfig, model: torch.nn.Module, resumed: dict | None) -> int | None:
    """Load `init_from` into a new run's model; returns the training steps behind the weights the run starts from
    (None: official weights, trained to the end). A resumed run has its weights and that count in its checkpoint."""
    if resumed is not None:
        return resumed.get("init_from_steps", 0)
    if not cfg.init_from:
        return 0
    from phase1.weights import load_weights_into

    return load_weights_into(model, cfg.init_from)["steps"]


def build_parts(cfg: DictConfig, device: torch.device, resumed: dict | None) -> RunParts:
    """The codec, its optimizer, the image data and the R-D step; common.run.execute does the rest."""
    configs.require_positive(cfg, "data.batch_size", "data.patch_size")
    model = build_model(cfg.model).to(device)
    init_steps = _start_from(cfg, model, resumed)
    warmup = int(cfg.optim.get("warmup_steps", 0)) if cfg.optim.name == "balanced" else 0
    if warmup and cfg.init_from and resumed is None and runtime.is_main_process():
        trained = "official weights, trained to the end" if init_steps is None else f"trained {init_steps} steps"
        left = 0 if init_steps is None else max(0, warmup - init_steps)
        print(f"note: init_from is {trained}: {left} of Balanced's optim.warmup_steps={warmup} are left",
              file=sys.stderr)  # fmt: skip
    train_set, val_paths, test_paths = _data(cfg)
    hooks = partial(
        CodecHooks,
        criterion=RateDistortionLoss(cfg.lmbda, cfg.loss_metric),
        device=device,
        precision=cfg.precision,
        val_paths=val_paths,
        test_paths=test_paths,
        real_bitstreams=cfg.eval.real_bitstreams,
        init_from_steps=init_steps,
    )
    tags = {"model": cfg.model.name, "optim": cfg.optim.name}
    if cfg.get("rd_set"):  # the R-D curve this run belongs to (reports draw one per rd_set and optimizer)
        tags["rd_set"] = cfg.rd_set
    return RunParts(
        model=model,
        optimizer=build_optimizer(model, cfg.optim, init_steps),
        hooks=hooks,
        train_set=train_set,
        batch_size=cfg.data.batch_size,  # the global batch is world_size x data.batch_size
        tags=tags,
        num_workers=cfg.data.num_workers,
        after_fit=write_test_images,
    )


def train(cfg: DictConfig, on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train per `cfg` (see experiments/phase1/train.yaml); returns the final metrics.

    `on_log(step, metrics)` sees every logged point (sweeps report intermediate values through it)."""
    return run.execute(cfg, KIND, build_parts, on_log, objective=OBJECTIVE)


@configs.main("phase1")
def cli(cfg: DictConfig) -> dict:
    return train(cfg)  # configs.main prints its closing lines and turns a stop by a signal into the exit status


if __name__ == "__main__":
    cli()
