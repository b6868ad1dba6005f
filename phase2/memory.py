"""Dissipative Hebbian fast-weight memory with its SNR filter, memory resonance and Lyapunov adjustment.

Per head, with unit-norm queries and keys:
    S_t = exp(-Gamma_t dt) S_{t-1} + eta_t k_t^T v_t,    o_t = q_t S_t
computed in the parallel chunked form for training and as a recurrence for streaming (phase2/ops/hebbian).

The gates (phase2/ops/memory_gates: SNR filter, resonance, Lyapunov) read the state only at boundaries,
absolute positions 0, gate_interval, 2*gate_interval, ... of the stream, and act on per-token quantities:
Gamma, eta and the keys. Because they depend on positions, not on how the sequence is cut into calls or
compute chunks, the chunked form (any chunk_size), the recurrence and token-by-token streaming give the same
outputs. Two ways to run a call:
  scan   one kernel walks the boundaries and returns the call's gates (no gradient: they are controls),
         then the gated keys and decays go through the memory op once, in parallel (GPU, or the Triton
         interpreter)
  loop   boundary by boundary in PyTorch: gates, then the memory op on the segment (CPU, and the
         recurrence for single-token calls)
In float32 the two agree to rounding (tests/phase2/test_model.py). Under autocast the op's products take the
autocast dtype while the scan reads a float32 state advanced from the unrounded keys, so there the gates of
the two paths differ at that dtype's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2.ops.hebbian import hebbian_memory, kernels_fit
from phase2.ops.memory_gates import (
    GateParams,
    Gates,
    GateTrace,
    apply_gates,
    boundary_gates,
    gate_scan,
    hold,
    kernel_available,
    segment_lengths,
    trace_of,
)
from phase2.zeta import zeta_init_linear_, zeta_mode_basis


@dataclass
class MemoryState:
    S: torch.Tensor  # (B, H, K, V) float32 fast weights
    gates: Gates  # in force, and the Lyapunov rule's memory

    @classmethod
    def zeros(cls, B: int, H: int, K: int, V: int, device) -> MemoryState:
        return cls(torch.zeros(B, H, K, V, device=device), Gates.initial(B, H, K, device))

    def detach(self) -> MemoryState:
        return MemoryState(self.S.detach(), Gates(*(t.detach() for t in vars(self.gates).values())))


def gate_params(cfg) -> GateParams:
    return GateParams(
        interval=cfg.gate_interval,
        eta=cfg.hebbian_eta,
        snr_threshold=cfg.snr_threshold,
        gamma_boost=cfg.snr_gamma_boost,
        eta_boost=cfg.snr_eta_boost,
        adjust_rate=cfg.gamma_adjust_rate,
        resonance_threshold=cfg.resonance_energy_threshold,
        resonance=cfg.resonance_enabled,
    )


class HebbianMemory(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H, K = cfg.d_model, cfg.num_heads, cfg.head_dim
        self.cfg, self.H, self.K, self.params = cfg, H, K, gate_params(cfg)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, H * K, bias=False) for _ in range(3))
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(lin.weight, std=0.02)
            if cfg.use_zeta_init:
                zeta_init_linear_(lin.weight, std=0.02)
        self.rho = nn.Parameter(torch.full((H,), 0.5)) if cfg.resonance_enabled else None
        self.register_buffer("modes", zeta_mode_basis(K).float(), persistent=False)  # (K, K) columns u_j
        self.mode = "auto"  # "chunk", "recurrent", or "auto": the recurrence for single-token calls
        self.impl = cfg.ops_impl  # "auto" | "torch" | "triton" (phase2/ops/impls.py)

    def forward(self, h: torch.Tensor, gamma: torch.Tensor, pos0: int, st: MemoryState | None, want_diag: bool = False):
        """h (B, T, D), gamma (B, T, H) raw forgetting rate -> o (B, T, H*V), gated gamma (B, T, H), state, diag."""
        B, T, _ = h.shape
        H, K = self.H, self.K
        # under autocast the memory's products take its dtype; keys, decays and the state stay float32
        mm = torch.get_autocast_dtype("cuda") if h.is_cuda and torch.is_autocast_enabled("cuda") else torch.float32
        q = F.normalize(self.q_proj(h).float().view(B, T, H, K), dim=-1).transpose(1, 2)  # (B, H, T, K)
        k = F.normalize(self.k_proj(h).float().view(B, T, H, K), dim=-1).transpose(1, 2)
        v = self.v_proj(h).float().view(B, T, H, K).transpose(1, 2)  # (B, H, T, V)
        if st is None:
            st = MemoryState.zeros(B, H, K, K, h.device)
        elif st.S.shape[0] != B:
            raise ValueError(
                f"state batch size {st.S.shape[0]} != input batch size {B}; pass the state "
                "returned for this batch, or state=None to start fresh"
            )
        gamma_dt = (gamma.float() * self.cfg.hebbian_dt).transpose(1, 2)  # (B, H, T)
        mode = self.mode if self.mode != "auto" else ("recurrent" if T == 1 else "chunk")
        with torch.autocast(h.device.type, enabled=False):
            # the scan path wants the op's kernels too: its whole-call PyTorch form is slower on a GPU, and its
            # batched products are not bit-exactly causal inside a chunk (a later token moved earlier outputs
            # by ~1e-9 in a test), which the per-interval loop never shows
            scan = (
                mode == "chunk"
                and self.impl != "torch"
                and T > 0
                and kernel_available(k, v)
                and kernels_fit(q, v, self.cfg.chunk_size)
            )
            if scan:
                o, gate_per_token, S, trace = self._scanned(q, k, v, gamma_dt, pos0, st, mm)
            else:
                o, gate_per_token, S, trace = self._looped(q, k, v, gamma_dt, pos0, st, mode, mm)
        o = o.float().transpose(1, 2).reshape(B, T, H * K)
        gamma_eff = gamma.float() * gate_per_token.transpose(1, 2)
        diag = (
            _summarise(
                trace,
                segment_lengths(pos0, T, self.cfg.gate_interval),
                pos0,
                self.cfg.hebbian_dt,
                self.params.resonance_threshold,
            )
            if want_diag
            else None
        )
        return o, gamma_eff, MemoryState(S, trace.final), diag

    def _scanned(self, q, k, v, gamma_dt, pos0, st, mm):
        """All gates of the call from one scan, then one parallel pass of the memory op."""
        trace = gate_scan(
            k.detach(),
            v.detach(),
            gamma_dt.detach(),
            st.S.detach().float(),
            st.gates,
            self.modes,
            None if self.rho is None else self.rho.detach(),
            self.params,
            pos0,
            impl="triton",
        )
        G = self.cfg.gate_interval
        seg = (pos0 % G + torch.arange(q.shape[2], device=q.device)) // G  # (T,) segment of each token
        gg, ge, gk = trace.gamma[:, :, seg], trace.eta[:, :, seg], trace.key[:, :, seg]
        ks, g = apply_gates(k, gamma_dt, gg, ge, gk, self.modes, self.rho, self.params)
        o, S = hebbian_memory(q.to(mm), ks.to(mm), v.to(mm), g, st.S, self.cfg.chunk_size, "chunk", self.impl)
        return o, gg, S, trace

    def _looped(self, q, k, v, gamma_dt, pos0, st, mode, mm):
        """Boundary by boundary: gates from the state, then the memory op over the segment."""
        c, p = self.cfg, self.params
        gates, S, t0 = st.gates, st.S, 0
        opens = pos0 % c.gate_interval == 0
        outs, per_token, rows = [], [], []
        for j, n in enumerate(segment_lengths(pos0, q.shape[2], c.gate_interval)):
            stats = None
            if j > 0 or opens:
                gates, stats = boundary_gates(S, gates, self.modes, p)
            sl = slice(t0, t0 + n)
            gamma_gate = hold(gates.gamma, n)
            ks, g = apply_gates(
                k[:, :, sl],
                gamma_dt[:, :, sl],
                gamma_gate,
                hold(gates.eta, n),
                hold(gates.key, n),
                self.modes,
                self.rho,
                p,
            )
            o, S = hebbian_memory(
                q[:, :, sl].to(mm), ks.to(mm), v[:, :, sl].to(mm), g, S, c.chunk_size, mode, self.impl
            )
            outs.append(o)
            per_token.append(gamma_gate)
            rows.append((gates, stats, S.detach().square().sum((-2, -1))))
            t0 += n
        if not outs:  # an empty call: nothing happens
            empty = q.new_zeros(*q.shape[:2], 0)
            return q.new_zeros(*v.shape), empty, S, trace_of(rows, st.gates, opens, self.K)
        return torch.cat(outs, 2), torch.cat(per_token, 2), S, trace_of(rows, gates, opens, self.K)


def _summarise(trace: GateTrace, lengths, pos0, dt, threshold):
    """Tensors only (no host sync): per-boundary gate statistics and per-segment energies."""
    out = {}
    first = 0 if trace.opens_at_boundary else 1  # segment 0 opens with a boundary only at a multiple of the interval
    if trace.snr.shape[-1] > first:
        share = trace.share[:, :, first:]  # (B, H, n_boundaries, K)
        resonant = share > threshold
        out["snr"] = trace.snr[:, :, first:]  # (B, H, n_boundaries)
        out["diag_energy"] = share.transpose(1, 2).flatten(2)  # (B, n_boundaries, H*K)
        out["num_resonant_modes"] = resonant.sum(-1).float()  # (B, H, n_boundaries)
        out["total_resonance_energy"] = (share * resonant).sum(-1) * trace.energy[:, :, first:]
    if lengths:
        energy = trace.end_energy  # (B, H, n_segments): ||S||_F^2 at each segment's end
        out["energy"] = energy
        steps = torch.tensor(lengths[1:], dtype=energy.dtype, device=energy.device) * dt
        out["dE_dt"] = (energy[..., 1:] - energy[..., :-1]) / steps if len(lengths) > 1 else energy[..., :0]
        ends_at = torch.tensor(lengths, device=energy.device).cumsum(0) + pos0
        out["end_position"] = ends_at[1:]  # (n_segments - 1,) absolute position where each dE_dt ends
    return out
