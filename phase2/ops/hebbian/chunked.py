"""Parallel (chunked) Hebbian memory: the training form, every chunk at once.

For chunk c of length C, with b_t the cumulative log-decay inside the chunk (b_t = g_{c,0} + ... + g_{c,t}):
  state  dS_c = sum_{s in c} exp(b_C - b_s) k_s^T v_s                       (what chunk c writes)
  carry  S_in(c) = sum_{j<c} exp(B_{c-1} - B_j) dS_j + exp(B_{c-1}) S_0      (B_c: log-decay through chunk c)
  output o_t = sum_{s<=t in c} exp(b_t - b_s) (q_t . k_s) v_s + exp(b_t) q_t S_in(c)
The carry is one (NC x NC) lower-triangular matrix product instead of a loop over chunks, so nothing runs
sequentially. Every exponent is a difference of cumulative sums taken in the right order, hence <= 0:
nothing overflows however strong the decay. Matrix products run in the inputs' dtype (bfloat16 for speed,
float32 accumulation); cumulative decays are float32 (float64 for float64 inputs), the final state is
returned in that dtype.

This module is the PyTorch form (impl="torch": CPU, float64, shapes the kernels do not take); kernels.py runs
the same chunked computation as Triton kernels, whose carry is a sequential scan over chunks instead of the
(NC x NC) product: O(T) work rather than O(T^2 / C^2), at the price of a loop per (batch, head) row.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=64)
def _tril(rows: int, cols: int, diagonal: int, device: torch.device) -> torch.Tensor:
    return torch.ones(rows, cols, dtype=torch.bool, device=device).tril(diagonal)


def chunk_states_torch(k, v, b):
    """k (N, C, K), v (N, C, V), b (N, C) cumulative log-decay -> dS (N, K, V) = sum_s exp(b_C - b_s) k_s^T v_s."""
    w = torch.exp(b[..., -1:] - b).to(k.dtype)  # (N, C) decay from each step to the chunk's end
    return (k * w[..., None]).transpose(-1, -2) @ v


def chunk_o_torch(q, k, v, b, S_in):
    """q, k (N, C, K); v (N, C, V); b (N, C) cumulative log-decay; S_in (N, K, V) -> o (N, C, V) in b's dtype."""
    acc, mm = b.dtype, q.dtype
    C = q.shape[-2]
    causal = _tril(C, C, 0, q.device)
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")))  # (N, C, C)
    scores = (q @ k.transpose(-1, -2)).to(acc) * decay
    o = (scores.to(mm) @ v).to(acc)
    return o + ((q * torch.exp(b).to(mm)[..., None]) @ S_in.to(mm)).to(acc)


def hebbian_chunked_torch(q, k, v, g, initial_state, chunk_size: int):
    """q, k: (B, H, T, K) with T > 0; v: (B, H, T, V); g: (B, H, T) log-decay <= 0; initial_state (B, H, K, V)
    or None. Returns o (B, H, T, V) in q's dtype and the final state (B, H, K, V) in the accumulation dtype.
    """
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    mm = q.dtype
    C = chunk_size
    pad = (-T) % C  # zero keys and zero log-decay: padded steps neither write nor decay
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = F.pad(g, (0, pad))
    NC = (T + pad) // C
    q, k, v = q.reshape(B, H, NC, C, K), k.reshape(B, H, NC, C, K), v.reshape(B, H, NC, C, Vd)
    b = g.to(acc).reshape(B, H, NC, C).cumsum(-1)  # (B, H, NC, C)
    bC = b[..., -1]  # (B, H, NC): the chunk's total log-decay

    flat = lambda x: x.reshape(B * H * NC, *x.shape[3:])  # noqa: E731  (N = B*H*NC chunks)

    dS = chunk_states_torch(flat(k), flat(v), flat(b)).reshape(B, H, NC, K * Vd)  # what each chunk writes
    cB = bC.cumsum(-1)  # (B, H, NC): log-decay from the start through chunk c
    before = cB - bC  # through chunk c - 1
    earlier = _tril(NC, NC, -1, q.device)  # j < c
    carry = torch.exp((before[..., :, None] - cB[..., None, :]).masked_fill(~earlier, float("-inf")))
    S_in = carry.to(mm) @ dS  # (B, H, NC, K*V)
    to_end = torch.exp(cB[..., -1:] - cB)[..., None, :]  # (B, H, 1, NC)
    S_final = (to_end.to(mm) @ dS).to(acc).reshape(B, H, K, Vd)
    if initial_state is not None:
        S0 = initial_state.to(acc)
        S_in = (S_in + torch.exp(before)[..., None] * S0.reshape(B, H, 1, K * Vd)).to(mm)
        S_final = S_final + torch.exp(cB[..., -1])[..., None, None] * S0
    o = chunk_o_torch(flat(q), flat(k), flat(v), flat(b), S_in.reshape(B * H * NC, K, Vd))
    return o.reshape(B, H, NC * C, Vd)[:, :, :T].to(mm), S_final
