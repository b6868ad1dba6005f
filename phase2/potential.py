"""Non-Hermitian potential and BK-Core features: the per-token Hamiltonian of each memory channel.

For every head h and channel j of the memory width (num_heads x head_dim chains), token t contributes
    a_t = V_t - i * Gamma_t        V: real potential (a projection of the input), Gamma > 0 per head
to a tridiagonal H with constant hopping k = softplus(kappa) >= 0, and the BK-Core returns the causal
resolvent diagonal g_t = [(H[0..t, 0..t] - z)^-1]_{t,t} at the energy z = E + i*eta (eta > 0). With
Im(a - z) = -(Gamma + eta) <= -eta_min every |g_t| <= 1 / eta_min, so the features stay bounded. Gamma is the
same forgetting rate the Hebbian memory decays with (after the memory's gates), so it reaches both.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2.ops.bk_core import bk_core
from phase2.zeta import zeta_energies, zeta_init_linear_, zeta_ratios

ETA_MIN = 0.1  # floor of the BK-Core energies' imaginary part: |g| <= 10
GAMMA_FLOOR = 1e-3  # Gamma >= GAMMA_FLOOR * base_decay even where softplus underflows


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class NonHermitianPotential(nn.Module):
    """h (B, T, D) -> V (B, T, H, K) real potential, Gamma (B, T, H) > 0."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, base_decay: float, adaptive: bool, zeta: bool):
        super().__init__()
        self.H, self.K, self.base_decay = num_heads, head_dim, base_decay
        self.v_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        nn.init.normal_(self.v_proj.weight, std=0.02)
        if zeta:
            zeta_init_linear_(self.v_proj.weight, std=0.02)
        # Gamma = base_decay * softplus(u) / ln 2 (= base_decay * ratio_h at u = u_h); heads get the zeta
        # ratios gamma_h / gamma_1 as multiples of base_decay: forgetting on several time scales
        ratio = zeta_ratios(num_heads) if zeta else torch.ones(num_heads, dtype=torch.float64)
        bias = _inv_softplus(ratio * math.log(2.0)).float()
        self.gamma_bias = nn.Parameter(bias)
        self.gamma_proj = None
        if adaptive:  # input-dependent part; small so Gamma starts near its per-head value
            self.gamma_proj = nn.Linear(d_model, num_heads, bias=False)
            nn.init.normal_(self.gamma_proj.weight, std=0.02)

    def forward(self, h: torch.Tensor):
        B, T, _ = h.shape
        V = self.v_proj(h).view(B, T, self.H, self.K)
        u = self.gamma_bias if self.gamma_proj is None else self.gamma_proj(h) + self.gamma_bias
        gamma = self.base_decay * (F.softplus(u.float()) / math.log(2.0) + GAMMA_FLOOR)
        return V, gamma.expand(B, T, self.H)


class BKCoreFeatures(nn.Module):
    """(V, Gamma) per chain -> g = bk_core(V - i Gamma, softplus(kappa), E + i eta), complex (B, T, H, K)."""

    def __init__(self, num_heads: int, head_dim: int, zeta: bool, impl: str, block_size: int):
        super().__init__()
        n = num_heads * head_dim
        energies = zeta_energies(n) if zeta else torch.linspace(-math.sqrt(3), math.sqrt(3), n, dtype=torch.float64)
        self.energy = nn.Parameter(energies.float().view(num_heads, head_dim))
        self.eta_raw = nn.Parameter(torch.full((num_heads, head_dim), float(_inv_softplus(torch.tensor(0.9)))))
        self.kappa = nn.Parameter(torch.full((num_heads, head_dim), float(_inv_softplus(torch.tensor(0.5)))))
        self.impl = impl  # "auto" | "torch" | "triton" (phase2/ops/impls.py)
        self.block_size = block_size

    def z(self) -> torch.Tensor:
        return torch.complex(self.energy.float(), ETA_MIN + F.softplus(self.eta_raw.float()))  # (H, K)

    def forward(self, V: torch.Tensor, gamma: torch.Tensor, g_prev: torch.Tensor | None = None):
        """V (B, T, H, K), gamma (B, T, H), g_prev (B, H, K) complex from the previous call or None.

        Returns g (B, T, H, K) complex64 and its last step (B, H, K) for the next call.
        """
        a = torch.complex(V.float(), -gamma.float()[..., None].expand_as(V)).permute(0, 2, 3, 1)  # (B, H, K, T)
        if a.shape[-1] == 0:
            return a.permute(0, 3, 1, 2), g_prev
        z_hk = self.z()  # (H, K)
        z = z_hk[..., None]  # (H, K, 1)
        k = F.softplus(self.kappa.float()).to(a.dtype)[..., None]  # (H, K, 1): position 0's k is ignored
        if g_prev is not None:
            # continue the chain: a virtual step whose g equals the carried one, 1 / (a' - z) = g_prev
            first = (z_hk + 1.0 / g_prev)[..., None]  # (B, H, K, 1)
            g = bk_core(torch.cat([first, a], -1), k, z, impl=self.impl, chunk=self.block_size)[..., 1:]
        else:
            g = bk_core(a, k, z, impl=self.impl, chunk=self.block_size)
        return g.permute(0, 3, 1, 2), g[..., -1]  # (B, T, H, K), (B, H, K)
