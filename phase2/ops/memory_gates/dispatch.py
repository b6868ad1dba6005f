"""gate_scan: the gates of one call, from the kernel or the reference scan."""

from __future__ import annotations

import torch

from ..impls import choose_impl, dot_tiles_fit, kernels_run_on
from .reference import gate_scan_reference
from .types import GateParams, Gates, GateTrace

KERNELS = "phase2.ops.memory_gates.kernels"  # imported late: CPU-only users need no Triton


def kernel_fits(K: int, V: int) -> bool:
    """Whether the scan kernel takes keys of width K and values of width V (the tl.dot tile rule)."""
    return dot_tiles_fit(K, V)


def kernel_available(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether gate_scan(impl="auto") runs the kernel for keys k (B, H, T, K) and values v (B, H, T, V)."""
    return kernel_fits(k.shape[-1], v.shape[-1]) and kernels_run_on(k.device, KERNELS)


def gate_scan(
    k, v, gamma, S0, gates: Gates, modes, rho, params: GateParams, pos0: int, impl: str = "auto"
) -> GateTrace:
    """The call's gates per segment and boundary statistics; arguments in README.md.

    impl: "auto" | "torch" | "triton" (phase2/ops/impls.py).
    """
    K, V = k.shape[-1], v.shape[-1]
    takes = f"K and V powers of two in 16..128, got K={K}, V={V}"
    which = choose_impl("gate_scan", impl, k.device, KERNELS, kernel_fits(K, V), takes)
    if which == "torch":
        return gate_scan_reference(k, v, gamma, S0, gates, modes, rho, params, pos0)
    from .kernels import gate_scan_triton

    return gate_scan_triton(k, v, gamma, S0, gates, modes, rho, params, pos0)
