"""Phase 2 training: the BK-Core language model, or the Transformer baseline, on real text.

    python -m phase2.train model=small loop.max_steps=5000
    make train-phase2 ARGS="model=transformer"

`train(cfg) -> dict` is the only entry: the CLI, make, tests and Optuna trials all call it. Checkpoints carry
the tokenizer, so evaluate/generate/diagnostics need nothing but the checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from common import config as configs
from common import run, runtime
from common.checkpoint import CheckpointError, load_checkpoint, load_model_state, write_atomically
from common.loop import Loop, StepHooks, unwrap
from common.optim import CautiousAdam
from common.run import RunParts
from phase2.bk_core_lm import diagnostics_scalars
from phase2.data import TokenWindows, load_splits
from phase2.factory import build_model
from phase2.tokenizer import build_tokenizer, encode_documents, tokenizer_from_json

KIND = "phase2"
# The test pass scores the whole split once: in batches of about this many tokens (training's small batches make
# it slow), fewer where the logits of a batch (tokens x vocabulary, float32) would pass LOGITS_PER_BATCH.
TEST_BATCH_TOKENS = 16_384
LOGITS_PER_BATCH = 2**27
OBJECTIVE = run.Objective(
    keys=("model", "tokenizer", "loop.monitor"),
    ignore=tuple(f"model.overrides.{k}" for k in ("ops_impl", "triton_block_size", "chunk_size")),  # same outputs
)


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    # No weight decay on norms, biases and embeddings-like vectors (1-D parameters), as nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = tuple(cfg.betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, eps=cfg.get("eps", 1e-8))
    if cfg.name == "cautious_adam":
        return CautiousAdam(groups, lr=cfg.lr, betas=betas)
    raise ValueError(f"optim.name={cfg.name!r} is not one of: adamw, adam, cautious_adam")


class LanguageModelHooks(StepHooks):
    """Next-token cross-entropy; batch-level diagnostics every `diagnostics_every` steps."""

    def __init__(
        self,
        model,
        optimizer,
        device,
        precision: str,
        windows: dict[str, TokenWindows],
        bytes_per_token: dict[str, float],
        eval_batches: int | None,
        batch_size: int,
        diagnostics_every: int,
        tokenizer_json: str,
    ):
        super().__init__(model, optimizer)
        self.device, self.precision = device, precision
        self.windows, self.bytes_per_token = windows, bytes_per_token
        self.eval_batches, self.batch_size = eval_batches, batch_size
        self.diagnostics_every, self.tokenizer_json = diagnostics_every, tokenizer_json
        self.calls = 0

    def compute_loss(self, batch) -> dict[str, Any]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        self.calls += 1
        want_diag = self.diagnostics_every > 0 and self.calls % self.diagnostics_every == 0 and _has_diag(self.model)
        with runtime.autocast(self.device, self.precision):
            if want_diag:
                logits, diagnostics = self.model(x, return_diagnostics=True)
            else:
                logits, diagnostics = self.model(x), None
        # under DDP every rank logs the global mean; the gradient stays local and DDP averages it
        loss = runtime.globalize(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
        out: dict[str, Any] = {"loss": loss}
        if diagnostics is not None:
            out.update({f"diag/{k}": v for k, v in diagnostics_scalars(diagnostics).items()})
        return out

    def after_step(self, batch, out) -> dict[str, float]:
        return {"perplexity": math.exp(min(out["loss"].item(), 50.0))}

    def items_in(self, batch) -> int:
        return int(batch[0].numel())  # tokens

    def evaluate(self) -> dict[str, float]:
        """val/* on (the first eval.max_batches batches of) the validation split: model selection."""
        return self._score("val", self.batch_size, self.eval_batches)

    def test(self) -> dict[str, float]:
        """test/* on the whole test split, once, with the final weights (nothing when the split is shorter than
        one window)."""
        windows = self.windows.get("test")
        if windows is None:
            return {}
        vocab = unwrap(self.model).config.vocab_size
        tokens = min(TEST_BATCH_TOKENS, LOGITS_PER_BATCH // vocab)
        return self._score("test", max(self.batch_size, tokens // windows.seq_len), None)

    def _score(self, split: str, batch_size: int, max_batches: int | None) -> dict[str, float]:
        nll, count = evaluate_nll(self.model, self.windows[split], batch_size, self.device, max_batches)
        scores = nll_scores(nll / count, self.bytes_per_token[split])
        return {f"{split}/{k}": v for k, v in scores.items()}

    def extra_state(self) -> dict[str, Any]:
        return {"tokenizer_json": self.tokenizer_json}


def nll_scores(loss: float, bytes_per_token: float) -> dict[str, float]:
    """Mean next-token NLL (nats) as loss, perplexity and bits per byte (nats / ln 2 / UTF-8 bytes per token)."""
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
    }


def _has_diag(model) -> bool:
    return getattr(unwrap(model), "supports_diagnostics", False)


@torch.no_grad()
def evaluate_nll(model, windows: TokenWindows, batch_size: int, device, max_batches: int | None = None):
    """Summed next-token NLL (nats) and token count over contiguous windows: one pass over the split."""
    model.eval()
    total, count = 0.0, 0
    n = len(windows) if max_batches is None else min(len(windows), max_batches * batch_size)
    for start in range(0, n, batch_size):
        xs, ys = zip(*(windows[i] for i in range(start, min(start + batch_size, n))))
        x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        logits = model(x)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return total, count


def prepare_text(cfg: DictConfig, tokenizer_json: str | None = None):
    """Splits, tokenizer (trained on the train split when it is BPE, or restored), token streams and each split's
    UTF-8 bytes per token (what bits per byte divide by)."""
    splits = load_splits(
        cfg.data.source, cfg.data.path, cfg.data.hf_name, cfg.data.hf_config, cfg.data.get("encoding_errors", "strict")
    )
    tokenizer = (
        tokenizer_from_json(tokenizer_json)
        if tokenizer_json
        else build_tokenizer(cfg.tokenizer.kind, splits.train, cfg.tokenizer.vocab_size)
    )
    streams = {s: encode_documents(tokenizer, getattr(splits, s)) for s in ("train", "val", "test")}
    bytes_per_token = {s: splits.num_bytes[s] / max(streams[s].numel(), 1) for s in ("val", "test")}
    return tokenizer, streams, bytes_per_token


def write_history(loop: Loop, folder: Path) -> None:
    """training_history.json with the original code's fields, filled from the logged points (the run's after_fit)."""
    history = loop.state.history

    def series(key: str) -> list[float]:
        return [p[key] for p in history if key in p]

    record = {
        "epoch": loop.epoch,
        "global_step": loop.state.global_step,
        "best_val_loss": loop.state.best_val_loss,
        "train_losses": series("train/loss"),
        "val_losses": series("val/loss"),
        "gamma_history": series("train/diag/gamma_mean"),
        "snr_history": series("train/diag/snr_mean"),
        "resonance_history": series("train/diag/resonance_energy"),
        "stability_history": series("train/diag/lyapunov_stable_ratio"),
        "steps": [p["step"] for p in history],
    }
    (folder / "training_history.json").write_text(json.dumps(record, indent=1) + "\n")


def write_sample(cfg: DictConfig, loop: Loop, folder: Path) -> None:
    """The final weights continue `sample.prompt`: printed, kept as sample.txt and logged to the run (the run's
    after_fit, when it trained to its last step)."""
    if not cfg.sample.tokens or loop.state.global_step < loop.cfg.max_steps:
        return
    from phase2.generate import generate
    from phase2.inference import LanguageModel

    model = unwrap(loop.model).eval()
    device = next(model.parameters()).device
    lm = LanguageModel(model, tokenizer_from_json(loop.hooks.tokenizer_json), cfg.seq_len, {}, loop.state.global_step,
                       device)  # fmt: skip
    text = cfg.sample.prompt + "".join(piece for _, piece in generate(lm, [cfg.sample.prompt], _sampling(cfg)))
    path = write_atomically(folder / "sample.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
    loop.logger.log_artifact(path)
    print(f"sample from the final weights ({cfg.sample.tokens} tokens after {cfg.sample.prompt!r}):\n{text}")


def after_fit(cfg: DictConfig, loop: Loop, folder: Path) -> None:
    write_history(loop, folder)
    write_sample(cfg, loop, folder)


def _eval_windows(streams: dict[str, torch.Tensor], seq_len: int) -> dict[str, TokenWindows]:
    """Validation windows (required: they choose best.pt) and test windows, when the test split holds one."""
    windows = {"val": TokenWindows(streams["val"], seq_len, random_offset=False, name="the validation split")}
    if streams["test"].numel() >= seq_len + 2:
        windows["test"] = TokenWindows(streams["test"], seq_len, random_offset=False, name="the test split")
    elif runtime.is_main_process():
        print(f"note: the test split has {streams['test'].numel()} tokens, fewer than one window of seq_len="
              f"{seq_len}: this run ends without test numbers", file=sys.stderr)  # fmt: skip
    return windows


def _sampling(cfg: DictConfig):
    """The end-of-run sample's settings, checked before training (a bad one must not fail a finished run)."""
    from phase2.generate import Sampling

    if cfg.sample.tokens and not cfg.sample.prompt:
        raise ValueError("sample.prompt is empty: give the text the final weights continue, or sample.tokens=0")
    return Sampling(cfg.sample.tokens or 1, cfg.sample.temperature, cfg.sample.top_k, seed=cfg.seed).validate(
        prefix="sample."
    )


def build_parts(cfg: DictConfig, device: torch.device, resumed: dict | None) -> RunParts:
    """Text, tokenizer, the model, its optimizer and the next-token step; common.run.execute does the rest.

    A resumed run takes its tokenizer from the checkpoint, so the token ids mean what they meant."""
    configs.require_positive(cfg, "seq_len", "batch_size")
    _sampling(cfg)
    if resumed is not None and "tokenizer_json" not in resumed:
        raise CheckpointError(f"checkpoint {cfg.resume} holds no tokenizer: not a Phase 2 training checkpoint")
    tokenizer, streams, bytes_per_token = prepare_text(cfg, resumed["tokenizer_json"] if resumed else None)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len).to(device)
    if cfg.init_from and not resumed:
        load_model_state(model, load_checkpoint(cfg.init_from, kind=KIND)["model_state_dict"], cfg.init_from)
    hooks = partial(
        LanguageModelHooks,
        device=device,
        precision=cfg.precision,
        windows=_eval_windows(streams, cfg.seq_len),
        bytes_per_token=bytes_per_token,
        eval_batches=cfg.eval.max_batches,
        batch_size=cfg.batch_size,
        diagnostics_every=cfg.diagnostics_every,
        tokenizer_json=tokenizer.to_json(),
    )
    tags = {
        "model": _model_name(cfg.model),
        "tokenizer": tokenizer.kind,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return RunParts(
        model=model,
        optimizer=build_optimizer(model, cfg.optim),
        hooks=hooks,
        train_set=TokenWindows(streams["train"], cfg.seq_len, name="the training split"),
        batch_size=cfg.batch_size,
        tags=tags,
        d_model=model.config.d_model,
        after_fit=partial(after_fit, cfg),
    )


def train(cfg: DictConfig, on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train per `cfg` (see experiments/phase2/train.yaml); returns the final metrics."""
    return run.execute(cfg, KIND, build_parts, on_log, objective=OBJECTIVE)


def _model_name(cfg_model: DictConfig) -> str:
    return cfg_model.preset if cfg_model.kind == "phase2" else cfg_model.kind


@configs.main("phase2")
def cli(cfg: DictConfig) -> dict:
    return train(cfg)  # configs.main prints its closing lines and turns a stop by a signal into the exit status


if __name__ == "__main__":
    cli()
