"""Reference Hebbian memory (mode="recurrent"): the recurrence itself, one token at a time (float32 or float64).

    S_t = exp(g_t) S_{t-1} + k_t^T v_t,    o_t = q_t S_t

g_t <= 0 is the log-decay (the model passes -Gamma_t * dt) and k_t already carries the write strength eta_t.
This is also the streaming form: one step per generated token, the state passed from call to call.
"""

from __future__ import annotations

import torch


def hebbian_recurrent(q, k, v, g, initial_state=None):
    """q, k: (B, H, T, K); v: (B, H, T, V); g: (B, H, T); initial_state: (B, H, K, V) or None.

    Returns o (B, H, T, V) in q's dtype and the final state (B, H, K, V) in float32 (float64 for float64 input).
    """
    B, H, T, K = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        write = k[:, :, t, :, None].to(acc) * v[:, :, t, None, :].to(acc)  # (B, H, K, V) outer product
        S = torch.exp(g[:, :, t].to(acc))[..., None, None] * S + write
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t].to(acc), S))
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(B, H, 0, v.shape[-1], dtype=acc)
    return o.to(q.dtype), S
