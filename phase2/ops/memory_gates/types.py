"""The gates' types, shared by the reference scan (reference.py), the kernel (kernels.py) and the model.

GateParams are the gates' hyper-parameters, Gates what is in force between boundaries, GateTrace what one
call's scan returns: per segment (the pieces of a call between boundaries) gates and boundary statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GateParams:
    interval: int  # tokens between boundaries, counted from the first token of the stream
    eta: float  # base write strength
    snr_threshold: float
    gamma_boost: float
    eta_boost: float
    adjust_rate: float  # the Lyapunov multiplier's step
    resonance_threshold: float  # a fraction of ||S||_F^2
    resonance: bool


@dataclass
class Gates:
    """What is in force between boundaries and what the Lyapunov rule remembers, per (batch, head)."""

    gamma: torch.Tensor  # (B, H) Gamma multiplier (SNR filter x Lyapunov adjustment)
    eta: torch.Tensor  # (B, H) eta multiplier
    key: torch.Tensor  # (B, H, K) resonance weight of each mode (zeros when resonance is off)
    lyapunov: torch.Tensor  # (B, H) the Lyapunov multiplier (>= 1)
    last_energy: torch.Tensor  # (B, H) ||S||_F^2 at the last boundary

    @classmethod
    def initial(cls, B: int, H: int, K: int, device) -> Gates:
        z = torch.zeros(B, H, device=device)
        return cls(z + 1, z + 1, torch.zeros(B, H, K, device=device), z + 1, z.clone())


@dataclass
class GateTrace:
    """One call's gates per segment j (the pieces of the call between boundaries) and boundary statistics."""

    gamma: torch.Tensor  # (B, H, NS)
    eta: torch.Tensor  # (B, H, NS)
    key: torch.Tensor  # (B, H, NS, K)
    snr: torch.Tensor  # (B, H, NS) at the boundary opening segment j (undefined where none opens it)
    energy: torch.Tensor  # (B, H, NS) ||S||_F^2 there
    share: torch.Tensor  # (B, H, NS, K) energy share of each mode there
    end_energy: torch.Tensor  # (B, H, NS) ||S||_F^2 at the end of segment j
    final: Gates  # what is in force after the call
    opens_at_boundary: bool  # False when the call starts inside an interval: segment 0 keeps the old gates
