"""The chunked Hebbian memory as three Triton kernels, O(T): one sequential state scan, run forwards for the
states and backwards for their gradients, and two parallel chunk steps (the plan of flash-linear-attention's
chunk ops).

Rows n = (batch, head); chunks c of C tokens; b the chunk-local cumulative log-decay (b_t = g_0 + ... + g_t
inside the chunk), L_c = b at the chunk's last token, D[t, s] = exp(b_t - b_s) for s <= t (else 0):
  forward   h scan   S(c+1) = e^{L_c} S(c) + (k_c * e^{L_c - b_c})^T v_c     S(c): the state entering chunk c
            output   o_c = (q_c k_c^T * D) v_c + (q_c * e^{b_c}) S(c)                        all chunks at once
  backward  dh scan  dS(c) = e^{L_c} dS(c+1) + (q_c * e^{b_c})^T do_c,  dS(NC) = dS_final,  dS(0) = dS_0
            grads    dv = (q k^T * D)^T do + (k * e^{L - b}) dS(c+1)
                     dq = ((do v^T) * D) k + (do S(c)^T) * e^{b}
                     dk = ((do v^T) * D)^T q + (v dS(c+1)^T) * e^{L - b}
                     dG_t = q_t . dq_t - k_t . dk_t
            dg_s = sum_{t >= s} dG_t + <dS_final, S_final>
Why dG: with G the global cumulative log-decay, o_t = e^{G_t} q_t (S_0 + sum_{s <= t} e^{-G_s} k_s^T v_s), so G_t
enters as e^{+G_t} through the read at t and as e^{-G_t} through the write at t; q.dq and k.dk collect
exactly those two sums. g_s moves every G_t with t >= s, hence the reverse cumulative sum.

Products take the inputs' dtype (bfloat16 on tensor cores; float32 inputs use exact IEEE products), sums
and states are float32. Exponents are differences of cumulative sums taken in order, so they are <= 0 and
nothing overflows. No kernel transposes the result of a tl.dot before feeding it to another: transposed
products are computed as dots of their own, because Triton 3.4 to 3.7.0 miscompiles that pattern in
backward kernels on Hopper (flash-linear-attention issue #640).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..impls import triton_interpreting

# Triton picks interpreter or compiler when a kernel is defined, i.e. when this module is imported
INTERPRETED = triton_interpreting()


@triton.jit
def _decay(b, C: tl.constexpr, TRANSPOSED: tl.constexpr):
    # (C,) cumulative log-decay -> D[t, s] = exp(b_t - b_s) for s <= t, zero above the diagonal (or D^T)
    rc = tl.arange(0, C)
    if TRANSPOSED:
        keep = rc[None, :] >= rc[:, None]
        diff = b[None, :] - b[:, None]
    else:
        keep = rc[:, None] >= rc[None, :]
        diff = b[:, None] - b[None, :]
    return tl.where(keep, tl.exp(tl.where(keep, diff, 0.0)), 0.0)


@triton.jit
def _scan_kernel(
    x_ptr,
    y_ptr,
    b_ptr,
    h_ptr,
    init_ptr,
    last_ptr,
    T,
    NC,
    C: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_LAST: tl.constexpr,
    PREC: tl.constexpr,
):
    # forward (the h scan):  x = k, y = v,  S(c+1) = e^{L} S(c) + (k e^{L - b})^T v,  h[c] = S(c)
    # REVERSE (the dh scan): x = q, y = do, dS(c) = e^{L} dS(c+1) + (q e^{b})^T do,  h[c] = dS(c+1)
    i_v, n = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rc, rk = tl.arange(0, C), tl.arange(0, K)
    rv = i_v * BV + tl.arange(0, BV)
    kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros((K, BV), dtype=tl.float32)
    if HAS_INIT:
        S += tl.load(init_ptr + n * K * V + kv)
    for i in range(NC):
        c = NC - 1 - i if REVERSE else i
        tl.store(h_ptr + (n * NC + c) * K * V + kv, S.to(h_ptr.dtype.element_ty))
        t = c * C + rc
        inside = t < T
        x = tl.load(x_ptr + n * T * K + t[:, None] * K + rk[None, :], mask=inside[:, None], other=0.0)  # (C, K)
        y = tl.load(y_ptr + n * T * V + t[:, None] * V + rv[None, :], mask=inside[:, None], other=0.0)  # (C, BV)
        b = tl.load(b_ptr + n * NC * C + c * C + rc)
        last = tl.load(b_ptr + n * NC * C + c * C + C - 1)
        w = tl.exp(b) if REVERSE else tl.exp(last - b)
        xw = (x.to(tl.float32) * w[:, None]).to(x.dtype)
        S = S * tl.exp(last) + tl.dot(tl.trans(xw), y, input_precision=PREC)
    if STORE_LAST:
        tl.store(last_ptr + n * K * V + kv, S)


@triton.jit
def _o_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    b_ptr,
    h_ptr,
    o_ptr,
    T,
    NC,
    C: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    c, i_v, n = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rc, rk = tl.arange(0, C), tl.arange(0, K)
    rv = i_v * BV + tl.arange(0, BV)
    t = c * C + rc
    inside = t < T
    q = tl.load(q_ptr + n * T * K + t[:, None] * K + rk[None, :], mask=inside[:, None], other=0.0)  # (C, K)
    k = tl.load(k_ptr + n * T * K + t[:, None] * K + rk[None, :], mask=inside[:, None], other=0.0)
    v = tl.load(v_ptr + n * T * V + t[:, None] * V + rv[None, :], mask=inside[:, None], other=0.0)  # (C, BV)
    b = tl.load(b_ptr + n * NC * C + c * C + rc)
    S = tl.load(h_ptr + (n * NC + c) * K * V + rk[:, None] * V + rv[None, :])  # (K, BV)
    A = tl.dot(q, tl.trans(k), input_precision=PREC) * _decay(b, C, False)  # (C, C) float32
    o = tl.dot(A.to(v.dtype), v, input_precision=PREC)
    qe = (q.to(tl.float32) * tl.exp(b)[:, None]).to(q.dtype)
    o += tl.dot(qe, S, input_precision=PREC)
    tl.store(o_ptr + n * T * V + t[:, None] * V + rv[None, :], o.to(o_ptr.dtype.element_ty), mask=inside[:, None])


@triton.jit
def _grads_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    b_ptr,
    h_ptr,
    do_ptr,
    dh_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    dG_ptr,
    T,
    NC,
    C: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    PREC: tl.constexpr,
):
    c, n = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rc, rk, rv = tl.arange(0, C), tl.arange(0, K), tl.arange(0, V)
    t = c * C + rc
    inside = t < T
    ck = n * T * K + t[:, None] * K + rk[None, :]
    cv = n * T * V + t[:, None] * V + rv[None, :]
    kv = (n * NC + c) * K * V + rk[:, None] * V + rv[None, :]
    q = tl.load(q_ptr + ck, mask=inside[:, None], other=0.0)  # (C, K)
    k = tl.load(k_ptr + ck, mask=inside[:, None], other=0.0)
    v = tl.load(v_ptr + cv, mask=inside[:, None], other=0.0)  # (C, V)
    do = tl.load(do_ptr + cv, mask=inside[:, None], other=0.0)
    b = tl.load(b_ptr + n * NC * C + c * C + rc)
    last = tl.load(b_ptr + n * NC * C + c * C + C - 1)
    S = tl.load(h_ptr + kv)  # (K, V) state entering the chunk
    dS = tl.load(dh_ptr + kv)  # (K, V) gradient w.r.t. the state leaving it
    eb = tl.exp(b)
    to_end = tl.exp(last - b)
    Dt = _decay(b, C, True)  # Dt[s, t] = D[t, s]
    At = tl.dot(k, tl.trans(q), input_precision=PREC) * Dt  # (C, C): (q k^T * D)^T
    kw = (k.to(tl.float32) * to_end[:, None]).to(k.dtype)
    dv = tl.dot(At.to(do.dtype), do, input_precision=PREC) + tl.dot(kw, dS, input_precision=PREC)
    tl.store(dv_ptr + cv, dv.to(dv_ptr.dtype.element_ty), mask=inside[:, None])
    dA = tl.dot(do, tl.trans(v), input_precision=PREC) * _decay(b, C, False)  # (C, C): (do v^T) * D
    dq = tl.dot(dA.to(k.dtype), k, input_precision=PREC) + tl.dot(do, tl.trans(S), input_precision=PREC) * eb[:, None]
    dAt = tl.dot(v, tl.trans(do), input_precision=PREC) * Dt  # ((do v^T) * D)^T as its own product
    dk = (
        tl.dot(dAt.to(q.dtype), q, input_precision=PREC)
        + tl.dot(v, tl.trans(dS), input_precision=PREC) * to_end[:, None]
    )
    dG = tl.sum(q.to(tl.float32) * dq, axis=1) - tl.sum(k.to(tl.float32) * dk, axis=1)
    tl.store(dq_ptr + ck, dq.to(dq_ptr.dtype.element_ty), mask=inside[:, None])
    tl.store(dk_ptr + ck, dk.to(dk_ptr.dtype.element_ty), mask=inside[:, None])
    tl.store(dG_ptr + n * T + t, dG, mask=inside)


# ------------------------------------------------------------------------------------------- host side
def _prec(x: torch.Tensor):
    return "ieee" if x.dtype == torch.float32 else None  # float32: no silent TF32 rounding


def _scan_block(N: int, V: int, device) -> int:
    """V columns per scan program: the scans are sequential in time, so split V until the rows fill the GPU."""
    if INTERPRETED or device.type != "cuda":
        return min(V, 64)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for bv in (64, 32):
        if bv <= V and N * (V // bv) >= 2 * sms:
            return bv
    return min(V, 16)


def _forward(q, k, v, b, S0, C: int):
    """q, k (N, T, K); v (N, T, V); b (N, NC*C) float32; S0 (N, K, V) float32 or None -> o, states h, S_T."""
    N, T, K = q.shape
    V = v.shape[-1]
    NC = b.shape[-1] // C
    h = q.new_empty(N, NC, K, V)  # states entering each chunk, in the products' dtype
    S_T = torch.empty(N, K, V, device=q.device, dtype=torch.float32)
    BV = _scan_block(N, V, q.device)
    _scan_kernel[(V // BV, N)](
        k,
        v,
        b,
        h,
        S0 if S0 is not None else S_T,
        S_T,
        T,
        NC,
        C=C,
        K=K,
        V=V,
        BV=BV,
        REVERSE=False,
        HAS_INIT=S0 is not None,
        STORE_LAST=True,
        PREC=_prec(q),
        num_warps=4,
    )
    o = torch.empty_like(v)
    BVo = min(V, 64)
    _o_kernel[(NC, V // BVo, N)](q, k, v, b, h, o, T, NC, C=C, K=K, V=V, BV=BVo, PREC=_prec(q), num_warps=4)
    return o, h, S_T


def _backward(q, k, v, b, h, do, dS_T, has_S0: bool, C: int):
    """-> dq, dk, dv, dG (N, T) float32 (before the reverse cumulative sum), dS_0 (or None)."""
    N, T, K = q.shape
    V = v.shape[-1]
    NC = b.shape[-1] // C
    dh = torch.empty_like(h)
    dS_0 = torch.empty(N, K, V, device=q.device, dtype=torch.float32) if has_S0 else None
    BV = _scan_block(N, V, q.device)
    anything = dS_0 if dS_0 is not None else dh  # a valid pointer where the kernel reads or writes nothing
    _scan_kernel[(V // BV, N)](
        q,
        do,
        b,
        dh,
        dS_T if dS_T is not None else anything,
        anything,
        T,
        NC,
        C=C,
        K=K,
        V=V,
        BV=BV,
        REVERSE=True,
        HAS_INIT=dS_T is not None,
        STORE_LAST=has_S0,
        PREC=_prec(q),
        num_warps=4,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dG = torch.empty(N, T, device=q.device, dtype=torch.float32)
    _grads_kernel[(NC, N)](q, k, v, b, h, do, dh, dq, dk, dv, dG, T, NC, C=C, K=K, V=V, PREC=_prec(q), num_warps=8)
    return dq, dk, dv, dG, dS_0


class HebbianChunkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, S0, C: int):
        B, H, T, K = q.shape
        V = v.shape[-1]
        NC = triton.cdiv(T, C)
        # chunk-local cumulative log-decay; padded steps decay by nothing (and their q, k, v read as zero)
        b = torch.nn.functional.pad(g.float(), (0, NC * C - T)).view(B, H, NC, C).cumsum(-1).view(B * H, NC * C)
        flat = lambda x, d: x.reshape(B * H, T, d)  # noqa: E731
        q2, k2, v2 = flat(q, K), flat(k, K), flat(v, V)
        S0f = S0.float().reshape(B * H, K, V).contiguous() if S0 is not None else None
        o, h, S_T = _forward(q2, k2, v2, b, S0f, C)
        ctx.save_for_backward(q2, k2, v2, b, h, S_T)
        ctx.shape, ctx.C, ctx.has_S0, ctx.S0_dtype = (B, H, T, K, V), C, S0 is not None, getattr(S0, "dtype", None)
        ctx.set_materialize_grads(False)
        return o.view(B, H, T, V), S_T.view(B, H, K, V)

    @staticmethod
    def backward(ctx, do, dS_T):
        q, k, v, b, h, S_T = ctx.saved_tensors
        B, H, T, K, V = ctx.shape
        do = torch.zeros_like(v) if do is None else do.reshape(B * H, T, V).to(v.dtype).contiguous()
        dS_Tf = None if dS_T is None else dS_T.float().reshape(B * H, K, V).contiguous()
        dq, dk, dv, dG, dS_0 = _backward(q, k, v, b, h, do, dS_Tf, ctx.has_S0, ctx.C)
        dg = dG.flip(-1).cumsum(-1).flip(-1)  # every G_t with t >= s moves with g_s
        if dS_Tf is not None:
            dg = dg + (dS_Tf * S_T).sum((-2, -1))[:, None]
        dS_0 = dS_0.view(B, H, K, V).to(ctx.S0_dtype) if dS_0 is not None else None
        return (dq.view(B, H, T, K), dk.view(B, H, T, K), dv.view(B, H, T, V), dg.view(B, H, T), dS_0, None)


def hebbian_chunked_triton(q, k, v, g, initial_state, chunk_size: int):
    """The chunked form through the kernels: (B, H, T, K/V) inputs of one dtype (float32/bfloat16/float16)."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"hebbian_chunked_triton: dtype {q.dtype}; use float32, bfloat16 or float16 (or impl='torch')")
    q, k, v = (x.to(q.dtype).contiguous() for x in (q, k, v))
    return HebbianChunkFunction.apply(q, k, v, g.contiguous(), initial_state, chunk_size)
