"""Dissipative Hebbian fast-weight memory (scalar-gated linear attention), O(T) per head (README.md).

    o, S = hebbian_memory(q, k, v, g, initial_state=None, chunk_size=64, mode="chunk", impl="auto")
    S_t = exp(g_t) S_{t-1} + k_t^T v_t,    o_t = q_t S_t          (per batch row and head)

dispatch.py checks and picks the implementation, reference.py is the recurrence (mode="recurrent", the
streaming form), chunked.py the chunked form in PyTorch (impl="torch"), kernels.py in Triton (impl="triton").
"""

from .dispatch import MAX_ROWS, hebbian_chunked, hebbian_memory, kernels_fit
from .reference import hebbian_recurrent

__all__ = ["MAX_ROWS", "hebbian_chunked", "hebbian_memory", "hebbian_recurrent", "kernels_fit"]
