"""The memory gates in PyTorch: the rule at one boundary, its action on the keys and decays, and the reference
scan (impl="torch"). The model's boundary-by-boundary loop (phase2/memory.py) uses the same pieces.

At a boundary, from the fast weights S (B, H, K, V) entering it (no gradient: the gates are controls):
  SNR filter  snr = sigma_1(S)^2 / (||S||_F^2 - sigma_1(S)^2). Below the threshold Gamma is multiplied by up to
              gamma_boost, above it eta by up to eta_boost (a smooth sigmoid switch)
  resonance   e_j = ||u_j^T S||^2 / ||S||_F^2 over the mode basis u_j; modes with e_j above the threshold
              resonate: k <- k + rho_h U (m * U^T k) amplifies writes into them
  Lyapunov    E = ||S||_F^2; if E rose since the previous boundary Gamma's multiplier grows by adjust_rate,
              else it relaxes by it towards 1
An empty memory (E = 0) gates nothing. The gates then hold until the next boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .types import GateParams, Gates, GateTrace

POWER_ITERATIONS = 8  # sigma_1 of a (K x V) state; fixed, so the SNR is a deterministic function of S
TINY = 1e-30


def segment_lengths(pos0: int, T: int, interval: int) -> list[int]:
    """Lengths of the call's pieces that end at boundaries (absolute positions that are multiples of interval)."""
    first = min(T, interval - pos0 % interval)
    rest = T - first
    return [first] * (first > 0) + [interval] * (rest // interval) + [rest % interval] * (rest % interval > 0)


def hold(gate: torch.Tensor, n: int) -> torch.Tensor:
    """A gate (B, H, ...) held for n tokens: (B, H, n, ...), a view."""
    return gate[:, :, None].expand(*gate.shape[:2], n, *gate.shape[2:])


@torch.no_grad()
def boundary_gates(S: torch.Tensor, prev: Gates, modes: torch.Tensor, p: GateParams):
    """S (B, H, K, V) entering a boundary -> (new Gates, statistics dict of snr, energy, share)."""
    S = S.detach().float()
    E = S.square().sum((-2, -1))  # (B, H)
    occupied = E / (E + TINY)  # 0 for an empty memory: no gate acts on nothing
    u = torch.full(S.shape[:-2] + S.shape[-1:], S.shape[-1] ** -0.5, device=S.device)  # (B, H, V)
    for _ in range(POWER_ITERATIONS):  # u <- S^T S u, normalised
        u = F.normalize(((S @ u[..., None]).transpose(-1, -2) @ S)[..., 0, :], dim=-1)
    sigma1 = (S @ u[..., None])[..., 0].square().sum(-1)  # (B, H) largest eigenvalue of S^T S
    snr = sigma1 / ((E - sigma1).clamp_min(0) + 1e-6 * E + TINY)
    switch = torch.sigmoid((p.snr_threshold - snr) / (0.1 * p.snr_threshold))
    low, high = switch * occupied, (1 - switch) * occupied
    rise = torch.sigmoid((E - prev.last_energy) / (0.05 * prev.last_energy + TINY))
    step = 1 + p.adjust_rate * (2 * rise - 1)
    lyapunov = torch.where(prev.last_energy > 0, (prev.lyapunov * step).clamp_min(1.0), prev.lyapunov)
    share = (modes.T @ S).square().sum(-1) / (E[..., None] + TINY)  # (B, H, K)
    thr = p.resonance_threshold
    key = torch.sigmoid((share - thr) / (0.1 * thr)) * occupied[..., None] if p.resonance else prev.key
    # (with resonance on the weights follow the state even where rho is None: the kernel does the same)
    gates = Gates((1 + (p.gamma_boost - 1) * low) * lyapunov, 1 + (p.eta_boost - 1) * high, key, lyapunov, E)
    return gates, dict(snr=snr, energy=E, share=share)


def apply_gates(k, gamma, gate_gamma, gate_eta, gate_key, modes, rho, p: GateParams):
    """Per-token gates onto the memory's inputs (differentiable in k, gamma and rho).

    k (B, H, L, K) unit keys, gamma (B, H, L) forgetting rate times dt; gate_gamma, gate_eta (B, H, L) and
    gate_key (B, H, L, K) the gates in force at each token -> written keys (B, H, L, K), log-decay (B, H, L).
    """
    if rho is not None:  # amplify the resonant modes of the keys
        coef = (k @ modes) * gate_key  # (B, H, L, K) mode coefficients
        k = k + rho[None, :, None, None] * (coef @ modes.T)
    return k * (p.eta * gate_eta)[..., None], -gamma * gate_gamma


@torch.no_grad()
def gate_scan_reference(k, v, gamma, S0, gates: Gates, modes, rho, p: GateParams, pos0: int) -> GateTrace:
    """The reference scan: boundaries one after another, the memory advanced between them in PyTorch.

    k (B, H, T, K) unit keys, v (B, H, T, V), gamma (B, H, T) forgetting rate times dt, S0 (B, H, K, V).
    """
    from phase2.ops.hebbian import hebbian_memory  # the memory op is the dynamics between boundaries

    lengths = segment_lengths(pos0, k.shape[2], p.interval)
    opens = pos0 % p.interval == 0
    S, t0, rows = S0.float(), 0, []
    for j, n in enumerate(lengths):
        stats = None
        if j > 0 or opens:
            gates, stats = boundary_gates(S, gates, modes, p)
        sl = slice(t0, t0 + n)
        ks, g = apply_gates(
            k[:, :, sl].float(),
            gamma[:, :, sl].float(),
            hold(gates.gamma, n),
            hold(gates.eta, n),
            hold(gates.key, n),
            modes,
            rho,
            p,
        )
        _, S = hebbian_memory(ks, ks, v[:, :, sl].float(), g, S, chunk_size=64, mode="chunk", impl="torch")
        rows.append((gates, stats, S.square().sum((-2, -1))))
        t0 += n
    return trace_of(rows, gates, opens, k.shape[-1])


def trace_of(rows, final: Gates, opens: bool, K: int) -> GateTrace:
    """A GateTrace from per-segment rows (gates in force, boundary statistics or None, energy at the end)."""
    nan = torch.full_like(final.gamma, float("nan"))  # statistics of a segment no boundary opens
    B, H = nan.shape

    def stack(xs, extra=()):
        return torch.stack(xs, 2) if xs else nan.new_zeros(B, H, 0, *extra)

    def pick(key, fill):
        return [r[1][key] if r[1] else fill for r in rows]

    return GateTrace(
        gamma=stack([r[0].gamma for r in rows]),
        eta=stack([r[0].eta for r in rows]),
        key=stack([r[0].key for r in rows], (K,)),
        snr=stack(pick("snr", nan)),
        energy=stack(pick("energy", nan)),
        share=stack(pick("share", nan[..., None].expand(B, H, K)), (K,)),
        end_energy=stack([r[2] for r in rows]),
        final=final,
        opens_at_boundary=opens,
    )
