"""Parallel (chunked) Hebbian memory: the training form, every chunk at once, gradients by autograd.

For chunk c of length C, with b_t the cumulative log-decay inside the chunk (b_t = g_{c,0} + ... + g_{c,t}):
  intra  o_t += sum_{s<=t in c} exp(b_t - b_s) (q_t . k_s) v_s              (causal masked "attention")
  state  dS_c = sum_{s in c} exp(b_C - b_s) k_s^T v_s                       (what chunk c writes)
  carry  S_in(c) = sum_{j<c} exp(B_{c-1} - B_j) dS_j + exp(B_{c-1}) S_0      (B_c: log-decay through chunk c)
  inter  o_t += exp(b_t) q_t S_in(c)
The carry is one (NC x NC) lower-triangular matrix product instead of a loop over chunks, so nothing runs
sequentially. Every exponent is a difference of cumulative sums taken in the right order, hence <= 0:
nothing overflows however strong the decay. Matrix products run in the inputs' dtype (bfloat16 for speed),
cumulative decays and the final state in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hebbian_chunked(q, k, v, g, initial_state=None, chunk_size: int = 64):
    """q, k: (B, H, T, K); v: (B, H, T, V); g: (B, H, T) log-decay <= 0; initial_state (B, H, K, V) or None.

    Returns o (B, H, T, V) in q's dtype and the final state (B, H, K, V) in the accumulation dtype.
    """
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    mm = q.dtype
    C = chunk_size
    if T == 0:
        S = q.new_zeros(B, H, K, Vd, dtype=acc) if initial_state is None else initial_state.to(acc)
        return q.new_zeros(B, H, 0, Vd), S
    pad = (-T) % C  # zero keys and zero log-decay: padded steps neither write nor decay
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = F.pad(g, (0, pad))
    NC = (T + pad) // C
    q, k, v = q.reshape(B, H, NC, C, K), k.reshape(B, H, NC, C, K), v.reshape(B, H, NC, C, Vd)
    b = g.to(acc).reshape(B, H, NC, C).cumsum(-1)  # (B, H, NC, C)
    bC = b[..., -1]  # (B, H, NC): the chunk's total log-decay

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")))  # (B,H,NC,C,C)
    scores = (q @ k.transpose(-1, -2)).to(acc) * decay
    o = (scores.to(mm) @ v).to(acc)  # (B, H, NC, C, V)

    k_to_end = k * torch.exp(bC[..., None] - b).to(mm)[..., None]
    dS = k_to_end.transpose(-1, -2) @ v  # (B, H, NC, K, V)

    cB = bC.cumsum(-1)  # (B, H, NC): log-decay from the start through chunk c
    before = cB - bC  # through chunk c - 1
    earlier = torch.ones(NC, NC, dtype=torch.bool, device=q.device).tril(-1)  # j < c
    carry = torch.exp((before[..., :, None] - cB[..., None, :]).masked_fill(~earlier, float("-inf")))
    S_in = (carry.to(mm) @ dS.reshape(B, H, NC, K * Vd)).reshape(B, H, NC, K, Vd)  # (B, H, NC, K, V)
    S_final = (torch.exp(cB[..., -1:] - cB)[..., None, None] * dS.to(acc)).sum(2)  # (B, H, K, V)
    if initial_state is not None:
        S0 = initial_state.to(acc)
        S_in = S_in + (torch.exp(before)[..., None, None] * S0[:, :, None]).to(S_in.dtype)
        S_final = S_final + torch.exp(cB[..., -1])[..., None, None] * S0
    o = o + ((q * torch.exp(b).to(mm)[..., None]) @ S_in.to(mm)).to(acc)
    return o.reshape(B, H, NC * C, Vd)[:, :, :T].to(mm), S_final
