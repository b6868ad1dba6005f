"""Dissipative Hebbian fast-weight memory (scalar-gated linear attention), O(T) per head.

    o, S = hebbian_memory(q, k, v, g, initial_state=None, chunk_size=64, mode="chunk")

    S_t = exp(g_t) S_{t-1} + k_t^T v_t,    o_t = q_t S_t          (per batch row and head)

Shapes:
    q, k: (B, H, T, K)   queries and keys; the write strength eta_t is folded into k by the caller
    v:    (B, H, T, V)
    g:    (B, H, T)      log-decay per token, <= 0 (the model passes -Gamma_t * dt)
    initial_state: (B, H, K, V) or None (zeros)
    o:    (B, H, T, V) in q's dtype;  S: (B, H, K, V) final state in float32 (float64 for float64 inputs)

mode="chunk": the parallel form for training (phase2/ops/hebbian/chunk.py); chunk_size changes the work
split, not the result. On CUDA it runs as Triton kernels (triton.py: a state scan run both ways, the output
and the gradient steps) when chunk_size, K and V are powers of two in 16..128 (impl="auto"), else in PyTorch
(impl="torch"). mode="recurrent": one step per token (naive.py), the streaming form. The two agree to float32
rounding. It is the same operation as flash-linear-attention's chunk_simple_gla with scale 1, in layout
(B, H, T, K).
"""

from __future__ import annotations

import torch

from .chunk import hebbian_chunked, kernels_fit
from .naive import hebbian_recurrent

__all__ = ["hebbian_memory", "hebbian_chunked", "hebbian_recurrent", "kernels_fit"]


def hebbian_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state=None,
    chunk_size: int = 64,
    mode: str = "chunk",
    impl: str = "auto",
):
    """See the module docstring."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"hebbian_memory: q {tuple(q.shape)} and k {tuple(k.shape)} must both be (B, H, T, K)")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"hebbian_memory: v {tuple(v.shape)} must be (B, H, T, V) with q's (B, H, T)")
    if g.shape != q.shape[:3]:
        raise ValueError(f"hebbian_memory: g {tuple(g.shape)} must be (B, H, T) = {tuple(q.shape[:3])}")
    B, H, _, K = q.shape
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(
            f"hebbian_memory: initial_state {tuple(initial_state.shape)} must be "
            f"(B, H, K, V) = {(B, H, K, v.shape[-1])}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"hebbian_memory: chunk_size={chunk_size!r} must be a positive integer")
    if mode == "chunk":
        return hebbian_chunked(q, k, v, g, initial_state, chunk_size, impl)
    if mode == "recurrent":
        return hebbian_recurrent(q, k, v, g, initial_state)
    raise ValueError(f"hebbian_memory: mode={mode!r}; use 'chunk' or 'recurrent'")
