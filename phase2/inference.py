"""A trained language model back from a phase2.train checkpoint: the model (Phase 2 or the Transformer
baseline), its tokenizer and the settings it was trained with. Used by evaluate, generate and diagnostics.

    lm = load_language_model("outputs/phase2/<run>/checkpoints/best.pt", device="cuda")
    lm.model, lm.tokenizer, lm.seq_len
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from common.checkpoint import CheckpointError, load_checkpoint
from phase2.factory import build_model
from phase2.tokenizer import tokenizer_from_json

KIND = "phase2"


@dataclass
class LanguageModel:
    model: torch.nn.Module  # in eval mode, on `device`
    tokenizer: Any  # ByteTokenizer | BPETokenizer
    seq_len: int  # the training window
    config: dict  # the run's resolved config
    step: int  # training steps behind these weights
    device: torch.device

    @property
    def streams(self) -> bool:
        """True when the model carries a recurrent state (Phase 2): one token costs O(1), not O(prefix)."""
        return getattr(self.model, "supports_diagnostics", False)

    @property
    def max_positions(self) -> int:
        return self.model.config.n_seq if self.streams else self.model.config.max_len


def load_language_model(path: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """Rebuild the model from the checkpoint's own config and weights; errors name the file and the problem."""
    payload = load_checkpoint(path, kind=KIND)
    for key in ("config", "tokenizer_json"):
        if not payload.get(key):
            raise CheckpointError(f"checkpoint {path} has no {key}: it was not written by phase2.train")
    config = payload["config"]
    tokenizer = tokenizer_from_json(payload["tokenizer_json"])
    model = build_model(
        OmegaConf.create(config["model"]), vocab_size=tokenizer.vocab_size, seq_len=int(config["seq_len"])
    )
    try:
        model.load_state_dict(payload["model_state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model its config describes ({str(err).splitlines()[0]})"
        ) from None
    device = torch.device(device)
    return LanguageModel(
        model.to(device).eval(), tokenizer, int(config["seq_len"]), config, int(payload.get("global_step", 0)), device
    )
