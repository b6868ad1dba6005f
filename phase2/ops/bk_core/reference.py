"""Reference BK-Core (impl="torch"): the causal continued fraction as a plain PyTorch loop, and its definition.

g_0 = 1 / (a_0 - z),  g_t = 1 / (a_t - z - k_t g_{t-1})

g_t is the last diagonal entry of the inverse of the leading (t+1)x(t+1) block of (H - z I), where H is
tridiagonal with diagonal a and k_t = H[t-1, t] * H[t, t-1]. Autograd through this loop is the gradient
every faster implementation is tested against; it is exact in complex128 and slow (one launch per step).
"""

import torch


def bk_core_reference(a: torch.Tensor, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """a, k: complex (..., T) of one dtype; z: complex, broadcastable to a. Returns g: (..., T)."""
    b = a - z  # (..., T): z may vary per chain or per position
    k = k.expand_as(b)
    T = b.shape[-1]
    gs = []
    g = None
    for t in range(T):
        # k[..., 0] couples to nothing: position 0 is the first site of the chain
        w = b[..., t] if t == 0 else b[..., t] - k[..., t] * g
        g = 1.0 / w
        gs.append(g)
    if not gs:
        return b.clone()
    return torch.stack(gs, dim=-1)  # (..., T)


def bk_core_dense(a: torch.Tensor, k: torch.Tensor, z: complex) -> torch.Tensor:
    """The definition itself, for tests: diagonal of the inverse of each leading block of H - z I.

    a, k: complex (T,) for one chain. The couplings are split symmetrically (H[t-1,t] = H[t,t-1] =
    sqrt(k_t)); only their product enters the result. O(T^4): for small T only.
    """
    T = a.shape[-1]
    off = torch.sqrt(k[1:])
    H = torch.diag(a) + torch.diag(off, 1) + torch.diag(off, -1)
    eye = torch.eye(T, dtype=a.dtype)
    out = torch.empty_like(a)
    for t in range(T):
        block = H[: t + 1, : t + 1] - z * eye[: t + 1, : t + 1]
        out[t] = torch.linalg.solve(block, eye[: t + 1, t])[t]  # entry (t, t) of the inverse
    return out
