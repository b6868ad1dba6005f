"""hebbian_memory: checks the arguments, then runs the recurrence or the chunked form in the chosen impl."""

from __future__ import annotations

import torch

from ..impls import check_impl, choose_impl, dot_tiles_fit
from .chunked import hebbian_chunked_torch
from .reference import hebbian_recurrent

KERNELS = "phase2.ops.hebbian.kernels"  # imported late: CPU-only users need no Triton
MAX_ROWS = 65535  # batch x heads: the kernels' grids put the rows in a dimension CUDA caps at 65,535
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The gradient kernel holds C x K, C x V and K x V tiles in registers at once; with all three sides 128 one call
# (1 x 1 x 200 tokens) did not finish within 250 s on one H200, so the largest tile is 64 x 128.
MAX_TILE = 64 * 128


def kernels_fit(q: torch.Tensor, v: torch.Tensor, chunk_size: int) -> bool:
    """Whether the Triton kernels take queries q (B, H, T, K), values v (B, H, T, V) and this chunk size."""
    B, H, _, K = q.shape
    V = v.shape[-1]
    small_tiles = max(chunk_size * K, chunk_size * V, K * V) <= MAX_TILE
    return q.dtype in KERNEL_DTYPES and dot_tiles_fit(chunk_size, K, V) and small_tiles and B * H <= MAX_ROWS


def hebbian_chunked(q, k, v, g, initial_state=None, chunk_size: int = 64, impl: str = "auto"):
    """The chunked (training) form in the chosen impl; same arguments and results as hebbian_memory."""
    check_impl("hebbian_memory", impl)  # also where T = 0 leaves nothing to choose
    B, H, T, K = q.shape
    if T == 0:  # nothing to write: the state passes through
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        S = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
        return q.new_zeros(B, H, 0, v.shape[-1]), S
    takes = (
        f"chunk_size, K and V powers of two in 16..128, at most one of them 128, float32/bfloat16/float16 and "
        f"batch x heads <= {MAX_ROWS}; "
        f"got chunk_size={chunk_size}, K={K}, V={v.shape[-1]}, {q.dtype}, {B * H} rows"
    )
    which = choose_impl("hebbian_memory", impl, q.device, KERNELS, kernels_fit(q, v, chunk_size), takes)
    if which == "torch":
        return hebbian_chunked_torch(q, k, v, g, initial_state, chunk_size)
    from .kernels import hebbian_chunked_triton

    return hebbian_chunked_triton(q, k, v, g, initial_state, chunk_size)


def _check_shapes(q, k, v, g, initial_state, chunk_size) -> None:
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
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t -> (o, final S); shapes in README.md.

    mode "chunk": the parallel form, in impl "auto" | "torch" | "triton" (phase2/ops/impls.py); chunk_size
    changes the work split, not the result. mode "recurrent": one step per token, the streaming form; it
    has one implementation, so impl is only checked.
    """
    _check_shapes(q, k, v, g, initial_state, chunk_size)
    check_impl("hebbian_memory", impl)
    if mode == "chunk":
        return hebbian_chunked(q, k, v, g, initial_state, chunk_size, impl)
    if mode == "recurrent":
        return hebbian_recurrent(q, k, v, g, initial_state)
    raise ValueError(f"hebbian_memory: mode={mode!r}; use 'chunk' or 'recurrent'")
