"""The chunked Hebbian memory's per-chunk steps as Triton kernels.

chunk_states_triton: dS = sum_s exp(b_C - b_s) k_s^T v_s per chunk in one kernel; its backward is the PyTorch
expression's (chunk_states_torch), recomputed. chunk_o_triton: the output step, with its exact backward:

Per chunk (one program each), with b the chunk's cumulative log-decay and D[t, s] = exp(b_t - b_s) for s <= t:
    forward   o = (q k^T * D) v + (q * e^b) S_in
    backward  dv = (q k^T * D)^T do;   dA = (do v^T) * D
              dq = dA k + (do S_in^T) * e^b;   dk = dA^T q;   dS_in = (q * e^b)^T do
              db_t = sum_s P[t, s] - sum_s P[s, t] + e^{b_t} (q_t S_in) . do_t,   P = (do v^T) * (q k^T * D)
Products take the inputs' dtype (bfloat16 on tensor cores; float32 inputs use exact IEEE products), sums
are float32. Masked exponents are zeroed before exp, so nothing overflows.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@triton.jit
def _decay(b, C: tl.constexpr):
    # (C,) cumulative log-decay -> (C, C) causal decay exp(b_t - b_s), zero above the diagonal
    rc = tl.arange(0, C)
    causal = rc[:, None] >= rc[None, :]
    return tl.where(causal, tl.exp(tl.where(causal, b[:, None] - b[None, :], 0.0)), 0.0)


@triton.jit
def _states_kernel(k_ptr, v_ptr, b_ptr, s_ptr, C: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BV: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rc, rk = tl.arange(0, C), tl.arange(0, K)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    k = tl.load(k_ptr + n * C * K + rc[:, None] * K + rk[None, :])  # (C, K)
    v = tl.load(v_ptr + n * C * V + rc[:, None] * V + rv[None, :])  # (C, BV)
    b = tl.load(b_ptr + n * C + rc)
    w = tl.exp(tl.load(b_ptr + n * C + C - 1) - b)  # (C,) decay to the chunk's end, <= 1
    kw = (k.to(tl.float32) * w[:, None]).to(k.dtype)
    dS = tl.dot(tl.trans(kw), v, input_precision=PREC)  # (K, BV)
    tl.store(s_ptr + n * K * V + rk[:, None] * V + rv[None, :], dS.to(s_ptr.dtype.element_ty))


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, b_ptr, s_ptr, o_ptr, C: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BV: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rc, rk = tl.arange(0, C), tl.arange(0, K)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    q = tl.load(q_ptr + n * C * K + rc[:, None] * K + rk[None, :])  # (C, K)
    k = tl.load(k_ptr + n * C * K + rc[:, None] * K + rk[None, :])
    v = tl.load(v_ptr + n * C * V + rc[:, None] * V + rv[None, :])  # (C, BV)
    b = tl.load(b_ptr + n * C + rc)  # (C,) float32
    S = tl.load(s_ptr + n * K * V + rk[:, None] * V + rv[None, :])  # (K, BV)
    A = tl.dot(q, tl.trans(k), input_precision=PREC) * _decay(b, C)  # (C, C) float32
    o = tl.dot(A.to(v.dtype), v, input_precision=PREC)
    qe = (q.to(tl.float32) * tl.exp(b)[:, None]).to(q.dtype)
    o += tl.dot(qe, S, input_precision=PREC)
    tl.store(o_ptr + n * C * V + rc[:, None] * V + rv[None, :], o.to(o_ptr.dtype.element_ty))


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, b_ptr, s_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, db_ptr, ds_ptr,
                C: tl.constexpr, K: tl.constexpr, V: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    rc, rk, rv = tl.arange(0, C), tl.arange(0, K), tl.arange(0, V)
    ck = n * C * K + rc[:, None] * K + rk[None, :]
    cv = n * C * V + rc[:, None] * V + rv[None, :]
    kv = n * K * V + rk[:, None] * V + rv[None, :]
    q, k = tl.load(q_ptr + ck), tl.load(k_ptr + ck)  # (C, K)
    v, do = tl.load(v_ptr + cv), tl.load(do_ptr + cv)  # (C, V)
    b = tl.load(b_ptr + n * C + rc)
    S = tl.load(s_ptr + kv)  # (K, V)
    eb = tl.exp(b)
    D = _decay(b, C)
    AD = tl.dot(q, tl.trans(k), input_precision=PREC) * D  # (C, C)
    dAD = tl.dot(do, tl.trans(v), input_precision=PREC)  # (C, C)
    dv = tl.dot(tl.trans(AD).to(do.dtype), do, input_precision=PREC)
    dA = (dAD * D).to(q.dtype)
    dq = tl.dot(dA, k, input_precision=PREC) + tl.dot(do, tl.trans(S), input_precision=PREC) * eb[:, None]
    dk = tl.dot(tl.trans(dA), q, input_precision=PREC)
    qe = (q.to(tl.float32) * eb[:, None]).to(q.dtype)
    dS = tl.dot(tl.trans(qe), do, input_precision=PREC)  # (K, V)
    P = dAD * AD
    inter = tl.sum(tl.dot(qe, S, input_precision=PREC) * do.to(tl.float32), axis=1)
    db = tl.sum(P, axis=1) - tl.sum(P, axis=0) + inter
    tl.store(dq_ptr + ck, dq.to(dq_ptr.dtype.element_ty))
    tl.store(dk_ptr + ck, dk.to(dk_ptr.dtype.element_ty))
    tl.store(dv_ptr + cv, dv.to(dv_ptr.dtype.element_ty))
    tl.store(db_ptr + n * C + rc, db)
    tl.store(ds_ptr + kv, dS.to(ds_ptr.dtype.element_ty))


def _prec(x: torch.Tensor):
    return "ieee" if x.dtype == torch.float32 else None  # float32: no silent TF32 rounding


def _fwd(q, k, v, b, S):
    N, C, K = q.shape
    V = v.shape[-1]
    o = torch.empty_like(v)
    BV = min(V, 64)
    _fwd_kernel[(N, V // BV)](q, k, v, b, S, o, C=C, K=K, V=V, BV=BV, PREC=_prec(q), num_warps=4)
    return o


def _bwd(q, k, v, b, S, do):
    N, C, K = q.shape
    V = v.shape[-1]
    dq, dk, dv, dS = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(S)
    db = torch.empty_like(b)
    _bwd_kernel[(N,)](q, k, v, b, S, do, dq, dk, dv, db, dS, C=C, K=K, V=V, PREC=_prec(q), num_warps=8)
    return dq, dk, dv, db, dS


class ChunkStatesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, b):
        ctx.save_for_backward(k, v, b)
        N, C, K = k.shape
        V = v.shape[-1]
        dS = k.new_empty(N, K, V)
        BV = min(V, 64)
        _states_kernel[(N, V // BV)](k, v, b, dS, C=C, K=K, V=V, BV=BV, PREC=_prec(k), num_warps=4)
        return dS

    @staticmethod
    def backward(ctx, dS):
        from .chunk import chunk_states_torch

        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in ctx.saved_tensors]
            return torch.autograd.grad(chunk_states_torch(*leaves), leaves, dS)


def chunk_states_triton(k: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k (N, C, K), v (N, C, V) one dtype; b (N, C) float32 -> dS (N, K, V) in k's dtype."""
    if k.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"chunk_states_triton: dtype {k.dtype}; use float32, bfloat16 or float16 (or impl='torch')")
    return ChunkStatesFunction.apply(k.contiguous(), v.contiguous(), b.float().contiguous())


class ChunkOFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, b, S):
        ctx.save_for_backward(q, k, v, b, S)
        return _fwd(q, k, v, b, S)

    @staticmethod
    def backward(ctx, do):
        return _bwd(*ctx.saved_tensors, do.contiguous())


def chunk_o_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: torch.Tensor, S: torch.Tensor):
    """q, k (N, C, K); v (N, C, V) one dtype; b (N, C) float32; S (N, K, V) in q's dtype -> o (N, C, V)."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"chunk_o_triton: dtype {q.dtype}; use float32, bfloat16 or float16 (or impl='torch')")
    q, k, v, S = (x.contiguous() for x in (q, k, v, S.to(q.dtype)))
    return ChunkOFunction.apply(q, k, v, b.float().contiguous(), S)
