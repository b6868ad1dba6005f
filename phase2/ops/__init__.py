"""The Phase 2 ops, each in its own folder with a PyTorch form and Triton kernels:

    bk_core       causal diagonal resolvent of a tridiagonal chain (phase2/ops/bk_core/README.md)
    hebbian       decaying fast-weight memory, scalar-gated linear attention (phase2/ops/hebbian/README.md)
    memory_gates  the memory's SNR filter, resonance and Lyapunov gates (phase2/ops/memory_gates/README.md)

Each op folder holds the same files: __init__.py (the public functions), dispatch.py (argument checks and
the choice of implementation), reference.py (the plain PyTorch form), kernels.py (Triton), README.md;
hebbian adds chunked.py (its chunked form in PyTorch), memory_gates types.py (the dataclasses).
Every op takes impl = "auto" | "torch" | "triton"; impls.py says what each means, reads TRITON_INTERPRET
and holds the tile rule of the tl.dot kernels.
"""

from .impls import IMPLS, check_impl, choose_impl, dot_tiles_fit, kernels_run_on, triton_interpreting

__all__ = ["IMPLS", "check_impl", "choose_impl", "dot_tiles_fit", "kernels_run_on", "triton_interpreting"]
