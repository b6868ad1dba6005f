"""bk_core: checks the arguments, brings them to one complex dtype and shape, and picks the implementation.

The kernels take every shape and complex64/complex128, so "auto" picks Triton wherever it can run: CUDA
tensors, or CPU tensors while Triton interprets (TRITON_INTERPRET=1); else the reference loop.
"""

import torch

from ..impls import check_impl, choose_impl
from .reference import bk_core_reference

KERNELS = "phase2.ops.bk_core.kernels"  # imported late: CPU-only users need no Triton

_COMPLEX = {
    torch.float16: torch.complex64,
    torch.bfloat16: torch.complex64,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}


def _check(x, name: str):
    if isinstance(x, (int, float, complex)):
        return x  # Python numbers take the tensors' precision below
    if not isinstance(x, torch.Tensor) or not (x.is_complex() or x.is_floating_point()):
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"bk_core: {name} has dtype {what}; pass a floating or complex tensor or number")
    return x


def _check_chunk(chunk) -> None:
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"bk_core: chunk={chunk!r} must be a positive integer or None")


def _common_form(a, k, z):
    """(a, k, z) -> a, k complex of the broadcast shape (..., T) and one dtype; z a tensor of that dtype."""
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
    return a.to(dtype).expand(shape), k.expand(shape), z


def bk_core(a: torch.Tensor, k, z, *, impl: str = "auto", chunk: int | None = None) -> torch.Tensor:
    """g_t = 1 / (a_t - z - k_t g_{t-1}) along the last dim; shapes in README.md.

    impl: "auto" | "torch" | "triton" (phase2/ops/impls.py). chunk: Triton only, the least time steps a
    program scans before the chunk maps are combined (None: the kernel's plan); it changes how the work is
    split, not the result.
    """
    _check_chunk(chunk)
    check_impl("bk_core", impl)  # a misspelt impl is named before any work
    a, k, z = _common_form(a, k, z)
    which = choose_impl("bk_core", impl, a.device, KERNELS, fits=True, takes="any shape")
    if which == "torch":
        return bk_core_reference(a, k, z)
    from .kernels import bk_core_triton

    return bk_core_triton(a, k, z, chunk)
