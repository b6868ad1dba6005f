"""The gate scan as one Triton kernel: one program per (batch, head) walks the call's segments in order.

The program holds the fast weights in the mode basis, S~ = U^T S (K x V, float32, registers). U is
orthonormal, so everything the gates read is unchanged or simpler there:
    E = ||S~||_F^2,   sigma_1(S~) = sigma_1(S)  (S~^T S~ = S^T S: the same power iterations in V-space),
    share_j = ||row j of S~||^2 / E,
and the resonance transform I + rho U diag(m) U^T becomes the row scaling 1 + rho m_j. With the keys given
in the mode basis (k~ = k U, one parallel product before the scan) a tile of BT tokens advances the state by
    S~ <- e^{L} S~ + eta eta_gate (1 + rho m) * sum_s e^{L - b_s} k~_s^T v_s
(b the tile's cumulative log-decay -gamma * gamma_gate, L its last value): one product per tile and none at
a boundary, so the sequential part is as short as it can be. Products are IEEE float32 by default: the
gates are sigmoids of state statistics and must agree with the PyTorch rule, which the token-by-token stream
uses. The scan advances its own float32 copy of the state from the unrounded keys; where the memory op runs
in bfloat16 (under autocast), the two states, and so the gates' inputs, differ at bfloat16's precision.
No dot result is ever transposed (see the Hebbian kernels' note on Triton and Hopper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..impls import triton_interpreting
from .reference import POWER_ITERATIONS, TINY, segment_lengths
from .types import Gates, GateTrace

# Triton picks interpreter or compiler when a kernel is defined, i.e. when this module is imported
INTERPRETED = triton_interpreting()


@dataclass
class GateScanConfig:
    # warps of the one program per (batch, head); on one H200 (K = V = 64, interval 64) this kernel took 9.4 us per
    # interval with 4 warps and 11.1 with 8 (benchmarks/results/gate_scan.md)
    num_warps: int = 4
    precision: str = "ieee"  # products of the state advance: "ieee" float32 or "tf32" (no faster, 1e-3 error)


CONFIG = GateScanConfig()


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _gate_scan_kernel(
    k_ptr,
    v_ptr,
    gam_ptr,
    s0_ptr,
    gg0_ptr,
    ge0_ptr,
    gk0_ptr,
    ly0_ptr,
    le0_ptr,
    rho_ptr,
    seg_g_ptr,
    seg_e_ptr,
    seg_k_ptr,
    snr_ptr,
    en_ptr,
    share_ptr,
    end_ptr,
    ly_ptr,
    le_ptr,
    T,
    NS,
    first_len,
    interval,
    j_first,
    u0,
    eta,
    thr,
    gamma_boost,
    eta_boost,
    rate,
    res_thr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    RESONANCE: tl.constexpr,
    ITERS: tl.constexpr,
    TINY_: tl.constexpr,
    PREC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    rk, rv, rt = tl.arange(0, K), tl.arange(0, V), tl.arange(0, BT)
    S = tl.load(s0_ptr + n * K * V + rk[:, None] * V + rv[None, :])  # (K, V) float32, mode basis
    gg, ge = tl.load(gg0_ptr + n), tl.load(ge0_ptr + n)
    gk = tl.load(gk0_ptr + n * K + rk)  # (K,)
    ly, le = tl.load(ly0_ptr + n), tl.load(le0_ptr + n)
    rho = tl.load(rho_ptr + n)
    for j in range(NS):
        s0 = tl.where(j == 0, 0, first_len + (j - 1) * interval)
        s1 = tl.minimum(T, first_len + j * interval)
        if j >= j_first:  # a boundary opens segment j: new gates from the state entering it
            rows = tl.sum(S * S, axis=1)  # (K,) energy per mode
            E = tl.sum(rows, axis=0)
            occupied = E / (E + TINY_)
            u = tl.full((V,), u0, tl.float32)
            for _ in tl.static_range(ITERS):  # u <- S^T S u, normalised
                y = tl.sum(S * tl.sum(S * u[None, :], axis=1)[:, None], axis=0)
                u = y / tl.maximum(tl.sqrt(tl.sum(y * y, axis=0)), 1e-12)
            x = tl.sum(S * u[None, :], axis=1)
            sigma1 = tl.sum(x * x, axis=0)
            snr = sigma1 / (tl.maximum(E - sigma1, 0.0) + 1e-6 * E + TINY_)
            switch = _sigmoid((thr - snr) / (0.1 * thr))
            rise = _sigmoid((E - le) / (0.05 * le + TINY_))
            ly = tl.where(le > 0, tl.maximum(ly * (1 + rate * (2 * rise - 1)), 1.0), ly)
            le = E
            gg = (1 + (gamma_boost - 1) * switch * occupied) * ly
            ge = 1 + (eta_boost - 1) * (1 - switch) * occupied
            share = rows / (E + TINY_)
            if RESONANCE:
                gk = _sigmoid((share - res_thr) / (0.1 * res_thr)) * occupied
            tl.store(snr_ptr + n * NS + j, snr)
            tl.store(en_ptr + n * NS + j, E)
            tl.store(share_ptr + (n * NS + j) * K + rk, share)
        tl.store(seg_g_ptr + n * NS + j, gg)
        tl.store(seg_e_ptr + n * NS + j, ge)
        tl.store(seg_k_ptr + (n * NS + j) * K + rk, gk)
        gain = eta * ge * (1 + rho * gk)  # (K,) the segment's write gain per mode
        for t0 in range(s0, s1, BT):
            t = t0 + rt
            inside = t < s1
            k = tl.load(k_ptr + n * T * K + t[:, None] * K + rk[None, :], mask=inside[:, None], other=0.0)
            v = tl.load(v_ptr + n * T * V + t[:, None] * V + rv[None, :], mask=inside[:, None], other=0.0)
            logd = -tl.load(gam_ptr + n * T + t, mask=inside, other=0.0) * gg  # (BT,) log-decay
            b = tl.cumsum(logd, axis=0)
            last = tl.sum(logd, axis=0)
            kw = k.to(tl.float32) * tl.exp(last - b)[:, None]  # (BT, K)
            X = tl.dot(tl.trans(kw), v.to(tl.float32), input_precision=PREC)  # (K, V) this tile's writes
            S = S * tl.exp(last) + gain[:, None] * X
        tl.store(end_ptr + n * NS + j, tl.sum(tl.sum(S * S, axis=1), axis=0))
    tl.store(ly_ptr + n, ly)
    tl.store(le_ptr + n, le)


def gate_scan_triton(
    k, v, gamma, S0, gates: Gates, modes, rho, p, pos0: int, precision: str | None = None, num_warps: int | None = None
) -> GateTrace:
    """Same contract as reference.gate_scan_reference (K and V as dispatch.kernel_fits takes them); the kernel
    variant from CONFIG unless given."""
    precision = CONFIG.precision if precision is None else precision
    num_warps = CONFIG.num_warps if num_warps is None else num_warps
    B, H, T, K = k.shape
    V = v.shape[-1]
    N = B * H
    lengths = segment_lengths(pos0, T, p.interval)
    NS = len(lengths)
    opens = pos0 % p.interval == 0
    dev = k.device
    f32 = dict(device=dev, dtype=torch.float32)
    rows = lambda x, *shape: x.float().reshape(N, *shape).contiguous()  # noqa: E731
    rho_rows = (rho.float() if rho is not None else torch.zeros(H, **f32)).expand(B, H).reshape(N).contiguous()
    out = dict(
        gamma=torch.empty(N, NS, **f32),
        eta=torch.empty(N, NS, **f32),
        key=torch.empty(N, NS, K, **f32),
        snr=torch.full((N, NS), float("nan"), **f32),
        energy=torch.full((N, NS), float("nan"), **f32),
        share=torch.full((N, NS, K), float("nan"), **f32),
        end_energy=torch.empty(N, NS, **f32),
    )
    lyapunov, last_energy = torch.empty(N, **f32), torch.empty(N, **f32)
    BT = min(64, max(16, triton.next_power_of_2(p.interval)))
    if NS:
        U = modes.float()
        k_modes = (k.float() @ U).reshape(N, T, K)  # keys in the mode basis, every token at once
        S0_modes = U.T @ S0.float()  # (B, H, K, V)
        _gate_scan_kernel[(N,)](
            k_modes,
            v.reshape(N, T, V).contiguous(),
            rows(gamma, T),
            rows(S0_modes, K, V),
            rows(gates.gamma),
            rows(gates.eta),
            rows(gates.key, K),
            rows(gates.lyapunov),
            rows(gates.last_energy),
            rho_rows,
            out["gamma"],
            out["eta"],
            out["key"],
            out["snr"],
            out["energy"],
            out["share"],
            out["end_energy"],
            lyapunov,
            last_energy,
            T,
            NS,
            lengths[0],
            p.interval,
            0 if opens else 1,
            V**-0.5,
            p.eta,
            p.snr_threshold,
            p.gamma_boost,
            p.eta_boost,
            p.adjust_rate,
            p.resonance_threshold,
            K=K,
            V=V,
            BT=BT,
            RESONANCE=p.resonance,
            ITERS=POWER_ITERATIONS,
            TINY_=TINY,
            PREC=precision,
            num_warps=num_warps,
        )
    else:
        lyapunov, last_energy = rows(gates.lyapunov), rows(gates.last_energy)
    shaped = {name: x.view(B, H, *x.shape[1:]) for name, x in out.items()}
    final_key = shaped["key"][:, :, -1] if NS else gates.key
    final = Gates(
        shaped["gamma"][..., -1] if NS else gates.gamma,
        shaped["eta"][..., -1] if NS else gates.eta,
        final_key,
        lyapunov.view(B, H),
        last_energy.view(B, H),
    )
    return GateTrace(**shaped, final=final, opens_at_boundary=opens)
