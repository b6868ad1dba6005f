"""Zeta initialisation: the imaginary parts gamma_n of the nontrivial Riemann zeta zeros 1/2 + i*gamma_n.

The zeros come from a shipped table (zeta_zeros.txt, computed with mpmath.zetazero to 18 significant digits;
gamma_1 = 14.134725141734693..., gamma_256 = 478.942181534634...). Everything here is computed in float64 on
the CPU and only then cast and moved, so a model gets the same numbers on every device.

Where the model uses them:
  zeta_positional_table  sin/cos of p * gamma_1 / gamma_n: incommensurate wavelengths from 2*pi up to
                         2*pi * gamma_n / gamma_1 (no two columns share a period)
  zeta_ratios            gamma_n / gamma_1: per-head forgetting rates base_decay * ratio (multi-timescale heads)
  zeta_energies          standardised gamma_n: BK-Core resonance energies E (level repulsion: no two equal)
  zeta_mode_basis        orthonormalised oscillations cos(gamma_n log x): the memory-resonance modes
  zeta_init_linear_      a weight U diag(s) V^T with s_n proportional to sqrt(gamma_1 / gamma_n)
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("zeta_zeros.txt")


@lru_cache(maxsize=1)
def _table() -> torch.Tensor:
    lines = TABLE.read_text().splitlines()
    values = [float(line) for line in lines if line.strip() and not line.startswith("#")]
    return torch.tensor(values, dtype=torch.float64)


def zeta_zeros(n: int) -> torch.Tensor:
    """The first n gamma_n, float64 (n,) on the CPU."""
    table = _table()
    if not 0 <= n <= table.numel():
        raise ValueError(
            f"zeta_zeros(n={n}): the shipped table holds {table.numel()} zeros ({TABLE.name}); "
            "ask for fewer (smaller d_model, head_dim or num_heads)"
        )
    return table[:n].clone()


def zeta_ratios(n: int) -> torch.Tensor:
    """gamma_n / gamma_1 for n = 1..n: 1, 1.487, 1.769, ... (float64, CPU)."""
    g = zeta_zeros(n)
    return g / g[0]


def zeta_energies(n: int) -> torch.Tensor:
    """The first n zeros standardised to mean 0, std 1 (float64, CPU); one zero gives 0."""
    g = zeta_zeros(n)
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    return (g - g.mean()) / g.std()


def zeta_positional_table(n_pos: int, d_model: int) -> torch.Tensor:
    """(n_pos, d_model) float32: column 2i = sin(p * gamma_1 / gamma_{i+1}), column 2i+1 = cos(...)."""
    n_freq = (d_model + 1) // 2
    freq = 1.0 / zeta_ratios(n_freq)  # (n_freq,) from 1 down to gamma_1 / gamma_n
    angle = torch.arange(n_pos, dtype=torch.float64)[:, None] * freq  # (n_pos, n_freq)
    table = torch.empty(n_pos, 2 * n_freq, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table[:, :d_model].float()


def zeta_mode_basis(d: int) -> torch.Tensor:
    """(d, d) float64 orthonormal columns: QR of M[x, n] = cos(gamma_n log(x + 2)), x = 0..d-1.

    cos(gamma_n log x) is the oscillation the n-th zero contributes to the prime-counting explicit formula;
    Gram-Schmidt in order of n keeps column n closest to it. Signs are fixed (positive diagonal of R).
    """
    g = zeta_zeros(d)
    x = torch.log(torch.arange(d, dtype=torch.float64) + 2.0)[:, None]
    Q, R = torch.linalg.qr(torch.cos(x * g[None, :]))
    return Q * torch.sign(torch.diagonal(R))[None, :]


def zeta_spectrum(n: int) -> torch.Tensor:
    """Singular values sqrt(gamma_1 / gamma_i), i = 1..n, scaled to unit root-mean-square (float64)."""
    s = torch.sqrt(1.0 / zeta_ratios(n))
    return s / s.square().mean().sqrt()


@torch.no_grad()
def zeta_init_linear_(weight: torch.Tensor, std: float) -> torch.Tensor:
    """Fill an (out, in) weight with U diag(s) V^T, s = zeta_spectrum, random orthogonal U, V (CPU RNG).

    The Frobenius norm equals that of an N(0, std^2) matrix of the same shape, so activations keep the
    scale of the plain init; only the spectrum changes. No SVD (the original ran one on CUDA and crashed):
    two QR factorisations of CPU Gaussians.
    """
    out_f, in_f = weight.shape
    r = min(out_f, in_f)
    U, _ = torch.linalg.qr(torch.randn(out_f, r, dtype=torch.float64, device="cpu"))
    V, _ = torch.linalg.qr(torch.randn(in_f, r, dtype=torch.float64, device="cpu"))
    s = zeta_spectrum(r) * std * math.sqrt(out_f * in_f / r)
    weight.copy_(((U * s) @ V.T).to(weight.dtype))
    return weight
