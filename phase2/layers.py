"""Layers the Phase 2 LM and the Transformer baseline share: the position-wise FFN and the sinusoidal table.

They live here, not in either model's module, because converting a baseline into a Phase 2 model copies the
FFN weight for weight: both models must build it from the same class.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))), with biases, as "Attention is all you need"."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))


def sinusoidal_table(n_pos: int, d_model: int) -> torch.Tensor:
    """(n_pos, d_model): PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...), computed in float64."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_pos, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table.float()
