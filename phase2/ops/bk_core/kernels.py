"""BK-Core in Triton: forward g_t = 1/(a_t - z - k_t g_{t-1}) and its exact backward, both O(T).

Work is split into rows. A row is one chain, or, when chains are few, one chunk of a chain. Each thread owns
whole rows and walks them in time, TT steps per loop iteration: a tile (R rows, TT steps) is loaded
coalesced and then regrouped so that each thread holds its row's TT steps in registers (the _columns tree).

Few long chains are cut into chunks so that there are enough rows to fill the GPU:
  forward  pass 1: each chunk's map g_in -> g_out is a Mobius map, the product of the 2x2 matrices
                   [[0, 1], [-k_t, b_t]] (b = a - z); the product is rescaled after every step (a Mobius
                   map is unchanged by scaling its matrix; unscaled, the entries grow like prod |b_t| and
                   overflow fp32 on long chunks);
           carry:  an associative scan over each chain's chunk maps gives every chunk's incoming g;
           pass 2: each chunk re-runs the plain recurrence from its incoming g (inputs are read twice).
  backward: with lambda_t = dL/dg_t (PyTorch's conjugate convention) and mu_t = conj(g_t)^2 lambda_t,
                   mu_t = conj(g_t)^2 (dg_t + conj(k_{t+1}) mu_{t+1}),   mu_T = 0,
                   grad a_t = -mu_t,  grad k_t = conj(g_{t-1}) mu_t (0 at t = 0),  grad z = sum_t mu_t,
            a linear reverse scan: chunk maps mu_in -> mu_out are affine (A, B), composed the same way.
            Its coefficients are Jacobian entries dg_s/dg_t of the forward, so they stay representable
            whenever the gradient itself does: no rescaling is needed.

Interleaved re/im floats (torch.view_as_real) carry the complex numbers; float32 and float64 both work.
"""

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ..impls import triton_interpreting


@dataclass
class BKCoreTritonConfig:
    # time steps a thread holds per loop iteration (8 or 16); the next tile is loaded meanwhile, so 2 x tile
    # steps per row are in flight: with ~124 rows per SM (16,384 chains) that is what hides HBM latency
    tile_fwd: int = 16
    tile_bwd: int = 16
    num_warps: int = 1  # small programs: several share an SM, one's loads overlap another's arithmetic
    # fewer chains than this: cut T into chunks (inputs are then read twice). Over 16,384 chains x 4,096 on
    # an H100 (8-step tiles), one pass ran the forward at 57% of the HBM roofline, two passes at 42%
    chunk_below: int = 8192
    target_rows: int = 32768  # (chain, chunk) rows wanted when chunking: ~250 threads per SM on an H100
    min_chunk: int = 64  # shorter chunks buy no parallelism worth the carry scan
    max_chunks: int = 1024  # one program scans one chain's chunk maps in registers


CONFIG = BKCoreTritonConfig()
# Triton picks interpreter or compiler when a kernel is defined, i.e. when this module is imported
INTERPRETED = triton_interpreting()


# ----------------------------------------------------------------------------------------- register tiles
@triton.jit
def _unzip(y):
    # (R, 2, n) -> even and odd positions of the last dim, each (R, 2, n // 2)
    return tl.split(tl.reshape(y, (y.shape[0], y.shape[1], y.shape[2] // 2, 2)))


@triton.jit
def _cols8(y):
    # (R, 2, 8) -> 8 x (R, 2) in time order; every split keeps its last dim inside one thread
    e, o = _unzip(y)  # t = 0 2 4 6 | 1 3 5 7
    ee, eo = _unzip(e)  # 0 4 | 2 6
    oe, oo = _unzip(o)  # 1 5 | 3 7
    c0, c4 = tl.split(ee)
    c2, c6 = tl.split(eo)
    c1, c5 = tl.split(oe)
    c3, c7 = tl.split(oo)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _columns(x, TT: tl.constexpr):
    # (R, 2*TT) interleaved re/im -> TT x (R, 2): time step t of every row, whole rows in one thread
    y = tl.permute(tl.reshape(x, (x.shape[0], TT, 2)), (0, 2, 1))  # (R, 2, TT)
    if TT == 8:
        c = _cols8(y)
    else:
        e, o = _unzip(y)
        ce = _cols8(e)
        co = _cols8(o)
        c = (
            ce[0],
            co[0],
            ce[1],
            co[1],
            ce[2],
            co[2],
            ce[3],
            co[3],
            ce[4],
            co[4],
            ce[5],
            co[5],
            ce[6],
            co[6],
            ce[7],
            co[7],
        )
    return c


@triton.jit
def _zip(e, o):
    # inverse of _unzip: two (R, 2, n) -> (R, 2, 2n), e at even positions
    return tl.reshape(tl.join(e, o), (e.shape[0], e.shape[1], 2 * e.shape[2]))


@triton.jit
def _rows8(c0, c1, c2, c3, c4, c5, c6, c7):
    # inverse of _cols8: 8 x (R, 2) -> (R, 2, 8)
    e = _zip(tl.join(c0, c4), tl.join(c2, c6))
    o = _zip(tl.join(c1, c5), tl.join(c3, c7))
    return _zip(e, o)


@triton.jit
def _rows(c, TT: tl.constexpr):
    # inverse of _columns: TT x (R, 2) -> (R, 2*TT) interleaved re/im
    if TT == 8:
        y = _rows8(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7])
    else:
        y = _zip(
            _rows8(c[0], c[2], c[4], c[6], c[8], c[10], c[12], c[14]),
            _rows8(c[1], c[3], c[5], c[7], c[9], c[11], c[13], c[15]),
        )
    y = tl.permute(y, (0, 2, 1))  # (R, TT, 2)
    return tl.reshape(y, (y.shape[0], 2 * TT))


@triton.jit
def _chain_offset(chain, T, WIDE: tl.constexpr):
    # 32-bit offsets unless the tensor needs more: each thread keeps one per row it loads
    if WIDE:
        return chain.to(tl.int64) * (2 * T)
    else:
        return chain * (2 * T)


@triton.jit
def _row_setup(NCH, L, NROWS, R: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)
    chain = rows // NCH
    chunk = rows - chain * NCH
    return rows, chain, chunk, chunk * L, rows < NROWS


# ------------------------------------------------------------------------------------------------ forward
@triton.jit
def _fwd_kernel(
    a_ptr,
    k_ptr,
    z_ptr,
    x0_ptr,
    g_ptr,
    T,
    L,
    NCH,
    NROWS,
    HAS_X0: tl.constexpr,
    WIDE: tl.constexpr,
    R: tl.constexpr,
    TT: tl.constexpr,
):
    rows, chain, chunk, t_begin, live = _row_setup(NCH, L, NROWS, R)
    base = _chain_offset(chain, T, WIDE)  # (R,) float offset of each chain
    zr = tl.load(z_ptr + 2 * chain, mask=live, other=0.0)
    zi = tl.load(z_ptr + 2 * chain + 1, mask=live, other=0.0)
    if HAS_X0:  # g just before this chunk, from the carry scan
        xr = tl.load(x0_ptr + 2 * rows, mask=live, other=0.0)
        xi = tl.load(x0_ptr + 2 * rows + 1, mask=live, other=0.0)
    else:
        xr = zr * 0.0
        xi = zr * 0.0
    f = tl.arange(0, 2 * TT)
    # tiles are loaded one iteration ahead, so each thread has two tiles of loads in flight
    idx = (2 * t_begin)[:, None] + f[None, :]  # (R, 2TT) float offset in the chain
    m = live[:, None] & (idx < 2 * T)
    a_nxt = tl.load(a_ptr + base[:, None] + idx, mask=m, other=1.0)
    k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m & (idx >= 2), other=0.0)  # k_0 couples nothing
    for j in range(0, L, TT):
        ac = _columns(a_nxt, TT)
        kc = _columns(k_nxt, TT)
        ptr, m_cur = base[:, None] + idx, m
        idx = idx + 2 * TT
        m = live[:, None] & (idx < 2 * T) & (j + TT < L)
        a_nxt = tl.load(a_ptr + base[:, None] + idx, mask=m, other=1.0)
        k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
        out = ()
        for i in tl.static_range(TT):
            ar, ai = tl.split(ac[i])
            kr, ki = tl.split(kc[i])
            wr = ar - zr - (kr * xr - ki * xi)
            wi = ai - zi - (kr * xi + ki * xr)
            s = 1.0 / (wr * wr + wi * wi)
            xr = wr * s
            xi = -wi * s
            out = out + (tl.join(xr, xi),)
        tl.store(g_ptr + ptr, _rows(out, TT), mask=m_cur)


@triton.jit
def _fwd_chunk_kernel(
    a_ptr, k_ptr, z_ptr, map_ptr, T, L, NCH, NROWS, WIDE: tl.constexpr, R: tl.constexpr, TT: tl.constexpr
):
    # each chunk's Mobius map [[p, q], [r, s]]: g_out = (p g_in + q) / (r g_in + s)
    rows, chain, chunk, t_begin, live = _row_setup(NCH, L, NROWS, R)
    live = live & (chunk < NCH - 1)  # nothing follows the last chunk
    base = _chain_offset(chain, T, WIDE)
    zr = tl.load(z_ptr + 2 * chain, mask=live, other=0.0)
    zi = tl.load(z_ptr + 2 * chain + 1, mask=live, other=0.0)
    one = zr * 0.0 + 1.0
    pr, pi, qr, qi = one, one * 0.0, one * 0.0, one * 0.0
    rr, ri, sr, si = one * 0.0, one * 0.0, one, one * 0.0
    f = tl.arange(0, 2 * TT)
    idx = (2 * t_begin)[:, None] + f[None, :]  # only full chunks come here: no mask on T
    a_nxt = tl.load(a_ptr + base[:, None] + idx, mask=live[:, None], other=1.0)
    k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=live[:, None] & (idx >= 2), other=0.0)
    for j in range(0, L, TT):
        ac, kc = _columns(a_nxt, TT), _columns(k_nxt, TT)
        idx = idx + 2 * TT  # prefetch the next tile
        m = live[:, None] & (j + TT < L)
        a_nxt = tl.load(a_ptr + base[:, None] + idx, mask=m, other=1.0)
        k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
        for i in tl.static_range(TT):
            ar, ai = tl.split(ac[i])
            kr, ki = tl.split(kc[i])
            br = ar - zr
            bi = ai - zi
            # left-multiply by [[0, 1], [-k, b]]: (p, q) <- (r, s); (r, s) <- b (r, s) - k (p, q)
            nrr = br * rr - bi * ri - (kr * pr - ki * pi)
            nri = br * ri + bi * rr - (kr * pi + ki * pr)
            nsr = br * sr - bi * si - (kr * qr - ki * qi)
            nsi = br * si + bi * sr - (kr * qi + ki * qr)
            # rescale so the largest entry stays O(1)
            n = 1.0 / (
                tl.abs(rr)
                + tl.abs(ri)
                + tl.abs(sr)
                + tl.abs(si)
                + tl.abs(nrr)
                + tl.abs(nri)
                + tl.abs(nsr)
                + tl.abs(nsi)
            )
            pr, pi, qr, qi = rr * n, ri * n, sr * n, si * n
            rr, ri, sr, si = nrr * n, nri * n, nsr * n, nsi * n
    out = map_ptr + 8 * rows
    tl.store(out + 0, pr, mask=live)
    tl.store(out + 1, pi, mask=live)
    tl.store(out + 2, qr, mask=live)
    tl.store(out + 3, qi, mask=live)
    tl.store(out + 4, rr, mask=live)
    tl.store(out + 5, ri, mask=live)
    tl.store(out + 6, sr, mask=live)
    tl.store(out + 7, si, mask=live)


@triton.jit
def _mobius_combine(lpr, lpi, lqr, lqi, lrr, lri, lsr, lsi, rpr, rpi, rqr, rqi, rrr, rri, rsr, rsi):
    # earlier map l, later map r: the matrix of r after l is R @ L, rescaled
    pr = rpr * lpr - rpi * lpi + rqr * lrr - rqi * lri
    pi = rpr * lpi + rpi * lpr + rqr * lri + rqi * lrr
    qr = rpr * lqr - rpi * lqi + rqr * lsr - rqi * lsi
    qi = rpr * lqi + rpi * lqr + rqr * lsi + rqi * lsr
    rr = rrr * lpr - rri * lpi + rsr * lrr - rsi * lri
    ri = rrr * lpi + rri * lpr + rsr * lri + rsi * lrr
    sr = rrr * lqr - rri * lqi + rsr * lsr - rsi * lsi
    si = rrr * lqi + rri * lqr + rsr * lsi + rsi * lsr
    n = 1.0 / (tl.abs(pr) + tl.abs(pi) + tl.abs(qr) + tl.abs(qi) + tl.abs(rr) + tl.abs(ri) + tl.abs(sr) + tl.abs(si))
    return pr * n, pi * n, qr * n, qi * n, rr * n, ri * n, sr * n, si * n


@triton.jit
def _fwd_carry_kernel(map_ptr, x0_ptr, NCH, BLOCK: tl.constexpr):
    # one chain per program: g entering chunk j+1 is (maps 0..j)(anything), since k_0 = 0
    c = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    ok = j < NCH - 1
    src = map_ptr + 8 * (c * NCH + j)
    m = tl.associative_scan(
        (
            tl.load(src + 0, mask=ok, other=1.0),
            tl.load(src + 1, mask=ok, other=0.0),
            tl.load(src + 2, mask=ok, other=0.0),
            tl.load(src + 3, mask=ok, other=0.0),
            tl.load(src + 4, mask=ok, other=0.0),
            tl.load(src + 5, mask=ok, other=0.0),
            tl.load(src + 6, mask=ok, other=1.0),
            tl.load(src + 7, mask=ok, other=0.0),
        ),
        0,
        _mobius_combine,
    )
    # apply to g_in = 0: q / s
    qr, qi, sr, si = m[2], m[3], m[6], m[7]
    d = 1.0 / (sr * sr + si * si)
    dst = x0_ptr + 2 * (c * NCH + j + 1)
    tl.store(dst, (qr * sr + qi * si) * d, mask=ok)
    tl.store(dst + 1, (qi * sr - qr * si) * d, mask=ok)
    first = x0_ptr + 2 * c * NCH + j  # g before chunk 0: 0, unused since k_0 = 0
    tl.store(first, qr * 0.0, mask=j < 2)


# ----------------------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_chunk_kernel(
    g_ptr, dg_ptr, k_ptr, map_ptr, T, L, NCH, NROWS, WIDE: tl.constexpr, R: tl.constexpr, TT: tl.constexpr
):
    # each chunk's affine map mu_in -> mu_out = A mu_in + B, walking the chunk backwards
    rows, chain, chunk, t_begin, live = _row_setup(NCH, L, NROWS, R)
    live = live & (chunk > 0)  # nothing precedes the first chunk
    base = _chain_offset(chain, T, WIDE)
    t_end = t_begin + L
    kn_ok = live & (t_end < T)
    knr = tl.load(k_ptr + base + 2 * t_end, mask=kn_ok, other=0.0)  # k_{t+1} of the chunk's last step
    kni = tl.load(k_ptr + base + 2 * t_end + 1, mask=kn_ok, other=0.0)
    Ar, Ai, Br, Bi = knr * 0.0 + 1.0, knr * 0.0, knr * 0.0, knr * 0.0
    f = tl.arange(0, 2 * TT)
    ntiles = L // TT
    idx = (2 * (t_begin + L - TT))[:, None] + f[None, :]  # the chunk's last tile first
    m = live[:, None] & (idx < 2 * T)  # steps past T load zeros: their mu is 0
    g_nxt = tl.load(g_ptr + base[:, None] + idx, mask=m, other=0.0)
    d_nxt = tl.load(dg_ptr + base[:, None] + idx, mask=m, other=0.0)
    k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
    for jj in range(0, ntiles):
        gc, dc, kc = _columns(g_nxt, TT), _columns(d_nxt, TT), _columns(k_nxt, TT)
        idx = idx - 2 * TT  # prefetch the tile to the left
        m = live[:, None] & (idx < 2 * T) & (jj + 1 < ntiles)
        g_nxt = tl.load(g_ptr + base[:, None] + idx, mask=m, other=0.0)
        d_nxt = tl.load(dg_ptr + base[:, None] + idx, mask=m, other=0.0)
        k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
        for i in tl.static_range(TT - 1, -1, -1):
            gr, gi = tl.split(gc[i])
            dr, di = tl.split(dc[i])
            g2r = gr * gr - gi * gi
            g2i = 2.0 * gr * gi
            # step map: A_t = conj(g^2 k_{t+1}), B_t = conj(g^2) dg_t
            atr = g2r * knr - g2i * kni
            ati = -(g2r * kni + g2i * knr)
            btr = g2r * dr + g2i * di
            bti = g2r * di - g2i * dr
            Ar, Ai = atr * Ar - ati * Ai, atr * Ai + ati * Ar
            Br, Bi = atr * Br - ati * Bi + btr, atr * Bi + ati * Br + bti
            knr, kni = tl.split(kc[i])
    out = map_ptr + 4 * rows
    tl.store(out + 0, Ar, mask=live)
    tl.store(out + 1, Ai, mask=live)
    tl.store(out + 2, Br, mask=live)
    tl.store(out + 3, Bi, mask=live)


@triton.jit
def _affine_combine(lar, lai, lbr, lbi, rar, rai, rbr, rbi):
    # earlier map l, later map r: x -> r(l(x)) = (rA lA) x + (rA lB + rB)
    return (rar * lar - rai * lai, rar * lai + rai * lar, rar * lbr - rai * lbi + rbr, rar * lbi + rai * lbr + rbi)


@triton.jit
def _bwd_carry_kernel(map_ptr, mu0_ptr, NCH, BLOCK: tl.constexpr):
    # one chain per program, chunks from the last backwards: mu entering chunk j from the right
    c = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    ok = i < NCH - 1
    chunk = NCH - 1 - i  # scan order: chunk NCH-1 first
    src = map_ptr + 4 * (c * NCH + chunk)
    m = tl.associative_scan(
        (
            tl.load(src + 0, mask=ok, other=1.0),
            tl.load(src + 1, mask=ok, other=0.0),
            tl.load(src + 2, mask=ok, other=0.0),
            tl.load(src + 3, mask=ok, other=0.0),
        ),
        0,
        _affine_combine,
    )
    # applied to mu = 0 past the end: mu at the start of `chunk`, which enters chunk - 1
    dst = mu0_ptr + 2 * (c * NCH + chunk - 1)
    tl.store(dst, m[2], mask=ok)
    tl.store(dst + 1, m[3], mask=ok)
    last = mu0_ptr + 2 * (c * NCH + NCH - 1) + i  # nothing follows the last chunk: mu = 0
    tl.store(last, m[2] * 0.0, mask=i < 2)


@triton.jit
def _bwd_kernel(
    g_ptr,
    dg_ptr,
    k_ptr,
    mu0_ptr,
    da_ptr,
    dk_ptr,
    dz_ptr,
    T,
    L,
    NCH,
    NROWS,
    HAS_MU0: tl.constexpr,
    WIDE: tl.constexpr,
    R: tl.constexpr,
    TT: tl.constexpr,
):
    rows, chain, chunk, t_begin, live = _row_setup(NCH, L, NROWS, R)
    base = _chain_offset(chain, T, WIDE)
    t_end = t_begin + L
    kn_ok = live & (t_end < T)
    knr = tl.load(k_ptr + base + 2 * t_end, mask=kn_ok, other=0.0)
    kni = tl.load(k_ptr + base + 2 * t_end + 1, mask=kn_ok, other=0.0)
    if HAS_MU0:  # mu just after this chunk, from the carry scan
        mr = tl.load(mu0_ptr + 2 * rows, mask=live, other=0.0)
        mi = tl.load(mu0_ptr + 2 * rows + 1, mask=live, other=0.0)
    else:
        mr = knr * 0.0
        mi = knr * 0.0
    szr = mr * 0.0  # this row's share of grad z
    szi = mr * 0.0
    f = tl.arange(0, 2 * TT)
    ntiles = L // TT
    t0 = t_begin + L - TT  # the chunk's last tile first
    idx = (2 * t0)[:, None] + f[None, :]
    m = live[:, None] & (idx < 2 * T)
    g_nxt = tl.load(g_ptr + base[:, None] + idx, mask=m, other=0.0)
    d_nxt = tl.load(dg_ptr + base[:, None] + idx, mask=m, other=0.0)
    k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
    for jj in range(0, ntiles):
        gc, dc, kc = _columns(g_nxt, TT), _columns(d_nxt, TT), _columns(k_nxt, TT)
        ptr, m_cur = base[:, None] + idx, m
        gp_ok = live & (t0 >= 1) & (t0 <= T)  # g_{t0 - 1}, left of the tile; g_{-1} = 0 kills grad k_0
        gpr = tl.load(g_ptr + base + 2 * t0 - 2, mask=gp_ok, other=0.0)
        gpi = tl.load(g_ptr + base + 2 * t0 - 1, mask=gp_ok, other=0.0)
        t0 = t0 - TT  # prefetch the tile to the left
        idx = idx - 2 * TT
        m = live[:, None] & (idx < 2 * T) & (jj + 1 < ntiles)
        g_nxt = tl.load(g_ptr + base[:, None] + idx, mask=m, other=0.0)
        d_nxt = tl.load(dg_ptr + base[:, None] + idx, mask=m, other=0.0)
        k_nxt = tl.load(k_ptr + base[:, None] + idx, mask=m, other=0.0)
        da = ()
        dk = ()
        for i in tl.static_range(TT - 1, -1, -1):
            gr, gi = tl.split(gc[i])
            dr, di = tl.split(dc[i])
            # lambda_t = dg_t + conj(k_{t+1}) mu_{t+1};  mu_t = conj(g_t)^2 lambda_t
            lr = dr + knr * mr + kni * mi
            li = di + knr * mi - kni * mr
            g2r = gr * gr - gi * gi
            g2i = 2.0 * gr * gi
            mr = g2r * lr + g2i * li
            mi = g2r * li - g2i * lr
            if i > 0:
                pr, pi = tl.split(gc[i - 1])
            else:
                pr, pi = gpr, gpi
            da = (tl.join(-mr, -mi),) + da
            dk = (tl.join(pr * mr + pi * mi, pr * mi - pi * mr),) + dk
            szr += mr
            szi += mi
            knr, kni = tl.split(kc[i])
        tl.store(da_ptr + ptr, _rows(da, TT), mask=m_cur)
        tl.store(dk_ptr + ptr, _rows(dk, TT), mask=m_cur)
    tl.store(dz_ptr + 2 * rows, szr, mask=live)
    tl.store(dz_ptr + 2 * rows + 1, szi, mask=live)


# ------------------------------------------------------------------------------------------------- host
def _plan(C: int, T: int, cfg: BKCoreTritonConfig, TT: int):
    """Chunk length L (a multiple of the tile TT) and chunks per chain."""
    whole = triton.cdiv(T, TT) * TT
    if C >= cfg.chunk_below:
        return whole, 1
    nch = max(1, min(cfg.target_rows // C, triton.cdiv(T, cfg.min_chunk), cfg.max_chunks))
    L = triton.cdiv(triton.cdiv(T, nch), TT) * TT
    return L, triton.cdiv(T, L)


def _fwd(a, k, z, cfg: BKCoreTritonConfig = CONFIG):
    """a, k: complex (C, T) contiguous; z: complex (C,). Returns g: complex (C, T)."""
    C, T = a.shape
    TT, W = cfg.tile_fwd, cfg.num_warps
    L, NCH = _plan(C, T, cfg, TT)
    R = 32 * W
    ar, kr, zr = torch.view_as_real(a), torch.view_as_real(k), torch.view_as_real(z)  # (C, T, 2), (C, 2)
    wide = 2 * a.numel() + 2 * TT >= 2**31
    g = torch.empty_like(a)
    nrows = C * NCH
    grid = (triton.cdiv(nrows, R),)
    x0 = ar  # unused placeholder when there is one chunk
    if NCH > 1:
        maps = torch.empty(nrows, 8, dtype=ar.dtype, device=a.device)
        _fwd_chunk_kernel[grid](ar, kr, zr, maps, T, L, NCH, nrows, WIDE=wide, R=R, TT=TT, num_warps=W)
        x0 = torch.empty(nrows, 2, dtype=ar.dtype, device=a.device)
        _fwd_carry_kernel[(C,)](maps, x0, NCH, BLOCK=triton.next_power_of_2(NCH), num_warps=4)
    _fwd_kernel[grid](
        ar, kr, zr, x0, torch.view_as_real(g), T, L, NCH, nrows, HAS_X0=NCH > 1, WIDE=wide, R=R, TT=TT, num_warps=W
    )
    return g


def _bwd(g, dg, k, cfg: BKCoreTritonConfig = CONFIG):
    """g, dg, k: complex (C, T) contiguous. Returns grad a, grad k (C, T) and grad z (C,)."""
    C, T = g.shape
    TT, W = cfg.tile_bwd, cfg.num_warps
    L, NCH = _plan(C, T, cfg, TT)
    R = 32 * W
    gr, dgr, kr = torch.view_as_real(g), torch.view_as_real(dg), torch.view_as_real(k)
    wide = 2 * g.numel() + 2 * TT >= 2**31
    da, dk = torch.empty_like(g), torch.empty_like(g)
    nrows = C * NCH
    dz = torch.empty(nrows, 2, dtype=gr.dtype, device=g.device)
    grid = (triton.cdiv(nrows, R),)
    mu0 = gr
    if NCH > 1:
        maps = torch.empty(nrows, 4, dtype=gr.dtype, device=g.device)
        _bwd_chunk_kernel[grid](gr, dgr, kr, maps, T, L, NCH, nrows, WIDE=wide, R=R, TT=TT, num_warps=W)
        mu0 = torch.empty(nrows, 2, dtype=gr.dtype, device=g.device)
        _bwd_carry_kernel[(C,)](maps, mu0, NCH, BLOCK=triton.next_power_of_2(NCH), num_warps=4)
    _bwd_kernel[grid](
        gr,
        dgr,
        kr,
        mu0,
        torch.view_as_real(da),
        torch.view_as_real(dk),
        dz,
        T,
        L,
        NCH,
        nrows,
        HAS_MU0=NCH > 1,
        WIDE=wide,
        R=R,
        TT=TT,
        num_warps=W,
    )
    dz = torch.view_as_complex(dz).view(C, NCH).sum(1)
    return da, dk, dz


class BKCoreFunction(torch.autograd.Function):
    """(a, k, z) complex (C, T), (C, T), (C,) -> g complex (C, T); gradients for all three."""

    @staticmethod
    def forward(ctx, a, k, z, cfg):
        g = _fwd(a, k, z, cfg)
        ctx.save_for_backward(g, k)
        ctx.cfg = cfg
        return g

    @staticmethod
    def backward(ctx, dg):
        g, k = ctx.saved_tensors
        da, dk, dz = _bwd(g, dg.contiguous(), k, ctx.cfg)
        return da, dk, dz, None


def bk_core_triton(a: torch.Tensor, k: torch.Tensor, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """a, k: complex (..., T) of one shape and dtype; z: complex, broadcastable to a. g: (..., T).

    chunk: the least number of time steps one program scans before chunk maps are combined (None: the
    config's min_chunk); it moves work between passes, not the result.
    """
    shape = a.shape
    T = shape[-1]
    if T == 0 or a.numel() == 0:
        return (a - z).clone()
    if z.dim() > 0 and z.shape[-1] != 1:  # z varies along T: fold it into the diagonal
        a = a - z
        z = torch.zeros((), dtype=a.dtype, device=a.device)
    lead = shape[:-1]
    C = a.numel() // T
    zc = z.expand(*lead, 1).reshape(C)  # (C,): one energy per chain, summed back by autograd
    cfg = CONFIG if chunk is None else replace(CONFIG, min_chunk=chunk)
    g = BKCoreFunction.apply(a.reshape(C, T).contiguous(), k.reshape(C, T).contiguous(), zc.contiguous(), cfg)
    return g.view(shape)
