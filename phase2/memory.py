"""Dissipative Hebbian fast-weight memory with its SNR filter, memory resonance and Lyapunov adjustment.

Per head, with unit-norm queries and keys:
    S_t = exp(-Gamma_t dt) S_{t-1} + eta_t k_t^T v_t,    o_t = q_t S_t
computed in the parallel chunked form for training and as a recurrence for streaming (phase2/ops/hebbian).

The gates read the memory state S only at gate boundaries: absolute positions 0, gate_interval,
2*gate_interval, ... of the stream. At a boundary, from the S entering it (no gradient: they are controls):
  SNR filter      snr = sigma_1(S)^2 / (||S||_F^2 - sigma_1(S)^2). Below snr_threshold Gamma is multiplied by
                  up to snr_gamma_boost, above it eta by up to snr_eta_boost (smooth sigmoid switch)
  resonance       e_j = ||u_j^T S||^2 / ||S||_F^2 over the zeta mode basis u_j; modes with e_j above
                  resonance_energy_threshold resonate: k <- k + rho_h U (m * U^T k) amplifies writes into them
  Lyapunov        E = ||S||_F^2; if E rose since the previous boundary (dE/dt > 0) Gamma's multiplier grows
                  by gamma_adjust_rate, else relaxes by it towards 1
The gates then hold for the next gate_interval tokens. Because they depend on positions, not on how the
sequence is cut into compute chunks, the chunked form (any chunk_size), the recurrence and token-by-token
streaming all give the same outputs. The price: a sequential loop over gate intervals inside one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2.ops.hebbian import hebbian_memory
from phase2.zeta import zeta_init_linear_, zeta_mode_basis

POWER_ITERATIONS = 8  # sigma_1 of a (K x K) state; fixed, so the SNR is a deterministic function of S
TINY = 1e-30


@dataclass
class MemoryState:
    S: torch.Tensor  # (B, H, K, V) float32 fast weights
    gate_gamma: torch.Tensor  # (B, H) Gamma multiplier in force (SNR filter x Lyapunov adjustment)
    gate_eta: torch.Tensor  # (B, H) eta multiplier in force
    gate_key: torch.Tensor  # (B, H, K) resonance weights of the modes (zeros when resonance is off)
    lyapunov: torch.Tensor  # (B, H) the Lyapunov adjustment's multiplier (>= 1)
    last_energy: torch.Tensor  # (B, H) ||S||_F^2 at the last boundary

    @classmethod
    def zeros(cls, B: int, H: int, K: int, V: int, device) -> MemoryState:
        z = torch.zeros(B, H, device=device)
        return cls(torch.zeros(B, H, K, V, device=device), z + 1, z + 1, torch.zeros(B, H, K, device=device),
                   z + 1, z.clone())

    def detach(self) -> MemoryState:
        return MemoryState(*(t.detach() for t in vars(self).values()))


class HebbianMemory(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H, K = cfg.d_model, cfg.num_heads, cfg.head_dim
        self.cfg, self.H, self.K = cfg, H, K
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, H * K, bias=False) for _ in range(3))
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(lin.weight, std=0.02)
            if cfg.use_zeta_init:
                zeta_init_linear_(lin.weight, std=0.02)
        self.rho = nn.Parameter(torch.full((H,), 0.5)) if cfg.resonance_enabled else None
        self.register_buffer("modes", zeta_mode_basis(K).float(), persistent=False)  # (K, K) columns u_j
        self.mode = "auto"  # "chunk", "recurrent", or "auto": the recurrence for single-token calls
        self.impl = "auto"  # chunked form's output step: "triton" (CUDA, fitting shapes), "torch", or "auto"

    # ---------------------------------------------------------------------------------------- gates
    @torch.no_grad()
    def gates(self, st: MemoryState, record: list | None):
        """New gates from the state entering a boundary (updates st's gate fields in place)."""
        c = self.cfg
        S = st.S.detach().float()
        E = S.square().sum((-2, -1))  # (B, H)
        occupied = E / (E + TINY)  # 0 for an empty memory: no gate acts on nothing
        M = S.transpose(-1, -2) @ S  # (B, H, V, V)
        u = torch.full(M.shape[:-1], M.shape[-1] ** -0.5, device=S.device)
        for _ in range(POWER_ITERATIONS):
            u = F.normalize((M @ u[..., None])[..., 0], dim=-1)
        sigma1 = (u * (M @ u[..., None])[..., 0]).sum(-1)  # (B, H) largest eigenvalue of S^T S
        snr = sigma1 / ((E - sigma1).clamp_min(0) + 1e-6 * E + TINY)
        low = torch.sigmoid((c.snr_threshold - snr) / (0.1 * c.snr_threshold)) * occupied
        high = (1 - torch.sigmoid((c.snr_threshold - snr) / (0.1 * c.snr_threshold))) * occupied
        rise = torch.sigmoid((E - st.last_energy) / (0.05 * st.last_energy + TINY))
        step = 1 + c.gamma_adjust_rate * (2 * rise - 1)
        st.lyapunov = torch.where(st.last_energy > 0, (st.lyapunov * step).clamp_min(1.0), st.lyapunov)
        st.last_energy = E
        st.gate_gamma = (1 + (c.snr_gamma_boost - 1) * low) * st.lyapunov
        st.gate_eta = 1 + (c.snr_eta_boost - 1) * high
        share = (self.modes.T @ S).square().sum(-1) / (E[..., None] + TINY)  # (B, H, K) energy share per mode
        if self.rho is not None:
            thr = c.resonance_energy_threshold
            st.gate_key = torch.sigmoid((share - thr) / (0.1 * thr)) * occupied[..., None]
        if record is not None:
            thr = c.resonance_energy_threshold
            resonant = share > thr
            record.append(dict(snr=snr, energy=E, share=share, n_resonant=resonant.sum(-1).float(),
                               resonance_energy=(share * resonant).sum(-1) * E))

    # -------------------------------------------------------------------------------------- forward
    def forward(self, h: torch.Tensor, gamma: torch.Tensor, pos0: int, st: MemoryState | None,
                want_diag: bool = False):
        """h (B, T, D), gamma (B, T, H) raw forgetting rate -> o (B, T, H*V), gated gamma (B, T, H), state, diag."""
        c = self.cfg
        B, T, _ = h.shape
        H, K = self.H, self.K
        with torch.autocast(h.device.type, enabled=False):  # the state accumulates: float32 throughout
            h = h.float()
            q = F.normalize(self.q_proj(h).view(B, T, H, K), dim=-1).transpose(1, 2)  # (B, H, T, K)
            k = F.normalize(self.k_proj(h).view(B, T, H, K), dim=-1).transpose(1, 2)
            v = self.v_proj(h).view(B, T, H, K).transpose(1, 2)  # (B, H, T, V)
            if st is None:
                st = MemoryState.zeros(B, H, K, K, h.device)
            elif st.S.shape[0] != B:
                raise ValueError(f"state batch size {st.S.shape[0]} != input batch size {B}; pass the state "
                                 "returned for this batch, or state=None to start fresh")
            st = MemoryState(**vars(st))  # never mutate the caller's state
            mode = self.mode if self.mode != "auto" else ("recurrent" if T == 1 else "chunk")
            record, ends, lengths = ([], [], []) if want_diag else (None, None, None)
            outs, gammas, S = [], [], st.S
            for t0, t1 in _segments(pos0, T, c.gate_interval):
                if (pos0 + t0) % c.gate_interval == 0:
                    st.S = S
                    self.gates(st, record)
                gam = gamma[:, t0:t1].float() * st.gate_gamma[:, None, :]  # (B, L, H)
                ks = k[:, :, t0:t1]
                if self.rho is not None:  # amplify the resonant modes of the keys
                    coef = (ks @ self.modes) * st.gate_key[:, :, None, :]  # (B, H, L, K) mode coefficients
                    ks = ks + self.rho[None, :, None, None] * (coef @ self.modes.T)
                ks = ks * (c.hebbian_eta * st.gate_eta)[:, :, None, None]
                g = -(gam * c.hebbian_dt).transpose(1, 2)  # (B, H, L) log-decay
                o, S = hebbian_memory(q[:, :, t0:t1], ks, v[:, :, t0:t1], g, S, c.chunk_size, mode, self.impl)
                outs.append(o)
                gammas.append(gam)
                if want_diag:
                    ends.append(S.detach().square().sum((-2, -1)))
                    lengths.append(t1 - t0)
            st.S = S
            o = torch.cat(outs, 2).transpose(1, 2).reshape(B, T, H * K)
            gamma_eff = torch.cat(gammas, 1) if gammas else gamma.float()
        diag = _summarise(record, ends, lengths, pos0, c.hebbian_dt) if want_diag else None
        return o, gamma_eff, st, diag


def _segments(pos0: int, T: int, interval: int):
    """[t0, t1) pieces of the call that end at gate boundaries (absolute positions multiple of interval)."""
    t0 = 0
    while t0 < T:
        t1 = min(T, t0 + interval - (pos0 + t0) % interval)
        yield t0, t1
        t0 = t1


def _summarise(record, ends, lengths, pos0, dt):
    """Tensors only (no host sync): per-boundary gate statistics and per-segment energies."""
    out = {}
    if record:
        out["snr"] = torch.stack([r["snr"] for r in record], -1)  # (B, H, n_boundaries)
        out["diag_energy"] = torch.stack([r["share"] for r in record], 1).flatten(2)  # (B, n_b, H*K)
        out["num_resonant_modes"] = torch.stack([r["n_resonant"] for r in record], -1)  # (B, H, n_b)
        out["total_resonance_energy"] = torch.stack([r["resonance_energy"] for r in record], -1)
    if ends:
        energy = torch.stack(ends, -1)  # (B, H, n_segments): ||S||_F^2 at each segment's end
        out["energy"] = energy
        steps = torch.tensor(lengths[1:], dtype=energy.dtype, device=energy.device) * dt
        out["dE_dt"] = (energy[..., 1:] - energy[..., :-1]) / steps if len(lengths) > 1 else energy[..., :0]
        ends_at = torch.tensor(lengths, device=energy.device).cumsum(0) + pos0
        out["end_position"] = ends_at[1:]  # (n_segments - 1,) absolute position where each dE_dt ends
    return out
