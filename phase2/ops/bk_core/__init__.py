"""BK-Core: the causal diagonal resolvent of a tridiagonal chain, O(T) per chain.

    g = bk_core(a, k, z)

For each chain (every index of the leading dims) and each position t,
    g_t = [(H[0..t, 0..t] - z I)^-1]_{t,t},   i.e.   g_0 = 1/(a_0 - z),  g_t = 1/(a_t - z - k_t g_{t-1})
where H is tridiagonal with diagonal a and k_t = H[t-1,t] * H[t,t-1] couples positions t-1 and t.
g_t depends on positions <= t only (causal).

Shapes:
    a: complex (..., T)   diagonal; in the model a_t = V_t - i Gamma_t (Gamma > 0: dissipation)
    k: (..., T)           couplings, real or complex, broadcastable to a; k[..., 0] is ignored
    z: complex number or tensor broadcastable to a (e.g. (H, 1) for one energy per head)
    g: complex (..., T)   broadcast shape of a, k and z

Stability: with Im(a_t - z) <= -delta < 0 and real k_t >= 0, every |g_t| <= 1/delta. Parameterise k with
softplus and z = E + i*eta (eta > 0) to stay inside that bound.

Gradients flow to a, k and z. CUDA tensors run the Triton kernels; CPU tensors run the PyTorch loop, or the
Triton kernels under the interpreter when TRITON_INTERPRET=1 is set (or impl="triton").
"""

import os

import torch

from .naive import bk_core_naive

__all__ = ["bk_core", "bk_core_naive"]

_IMPLS = ("auto", "naive", "triton")


def _check(x, name: str):
    if isinstance(x, (int, float, complex)):
        return x  # Python numbers take the tensors' precision below
    if not isinstance(x, torch.Tensor) or not (x.is_complex() or x.is_floating_point()):
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"bk_core: {name} has dtype {what}; pass a floating or complex tensor or number")
    return x


_COMPLEX = {
    torch.float16: torch.complex64,
    torch.bfloat16: torch.complex64,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}


def bk_core(a: torch.Tensor, k, z, *, impl: str = "auto", chunk: int | None = None) -> torch.Tensor:
    """g_t = 1 / (a_t - z - k_t g_{t-1}) along the last dim. See the module docstring for shapes.

    chunk: Triton only, the least time steps a program scans before the chunk maps are combined (None: the
    kernel's plan); it changes how the work is split, not the result.
    """
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"bk_core: chunk={chunk!r} must be a positive integer or None")
    if impl not in _IMPLS:
        raise ValueError(f"bk_core: impl={impl!r}; use one of {_IMPLS}")
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"bk_core: a must be a tensor of shape (..., T), got {type(a).__name__}")
    if a.dim() == 0:
        raise ValueError("bk_core: a is 0-d; it needs a last dim T (shape (..., T))")
    a, k, z = _check(a, "a"), _check(k, "k"), _check(z, "z")
    dtype = a.dtype
    for x in (k, z):
        if isinstance(x, torch.Tensor):
            dtype = torch.promote_types(dtype, x.dtype)
    dtype = _COMPLEX.get(dtype, dtype)
    k = torch.as_tensor(k, dtype=dtype, device=a.device)
    z = torch.as_tensor(z, dtype=dtype, device=a.device)
    try:
        shape = torch.broadcast_shapes(a.shape, k.shape, z.shape)
    except RuntimeError as err:
        raise ValueError(
            f"bk_core: shapes a {tuple(a.shape)}, k {tuple(k.shape)}, z {tuple(z.shape)} "
            "do not broadcast; k and z must broadcast to (..., T)"
        ) from err
    a = a.to(dtype).expand(shape)
    k = k.expand(shape)

    if impl == "auto":
        use_triton = a.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        impl = "triton" if use_triton else "naive"
    if impl == "naive":
        return bk_core_naive(a, k, z)
    from . import triton as tri  # imported late: CPU-only users need no Triton

    if not a.is_cuda and not tri.INTERPRETED:
        raise ValueError(
            "bk_core: impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before the "
            "first import of phase2.ops.bk_core.triton; or move the tensors to CUDA"
        )
    return tri.bk_core_triton(a, k, z, chunk)
