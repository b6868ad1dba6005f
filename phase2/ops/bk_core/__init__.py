"""BK-Core: the causal diagonal resolvent of a tridiagonal chain, O(T) per chain (README.md).

    g = bk_core(a, k, z, impl="auto")       g_0 = 1/(a_0 - z),  g_t = 1/(a_t - z - k_t g_{t-1})

dispatch.py checks and picks the implementation, reference.py is the PyTorch loop (impl="torch") and the
dense definition, kernels.py the Triton kernels (impl="triton").
"""

from .dispatch import bk_core
from .reference import bk_core_dense, bk_core_reference

__all__ = ["bk_core", "bk_core_dense", "bk_core_reference"]
