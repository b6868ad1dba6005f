"""The Hebbian memory's gates (SNR filter, memory resonance, Lyapunov adjustment) over one call.

    trace = gate_scan(k, v, gamma, S0, gates, modes, rho, params, pos0)

Gates are evaluated from the fast weights at boundaries, absolute positions 0, interval, 2*interval, ... of
the stream, and hold in between; so they depend on positions, not on how a sequence is cut into calls or
compute chunks. The scan finds them for a whole call (the state must be advanced from boundary to
boundary, a sequential walk), without gradient; the caller then applies them to the keys and decays
(apply_gates, differentiable) and runs the memory op once over the whole call, in parallel.

Shapes:
    k: (B, H, T, K) unit keys before gating;  v: (B, H, T, V);  gamma: (B, H, T) forgetting rate times dt
    S0: (B, H, K, V) fast weights entering the call;  gates: Gates in force entering it
    modes: (K, K) orthonormal columns u_j;  rho: (H,) resonance gain or None (resonance off)
    -> GateTrace: per segment (the pieces of the call between boundaries) gates and boundary statistics

impl="triton" runs one kernel (triton.py; CUDA, or TRITON_INTERPRET=1; K and V powers of two in 16..128);
"torch" the reference (naive.py); "auto" picks the kernel where it can run.
"""

from __future__ import annotations

import os

from .naive import (
    GateParams,
    Gates,
    GateTrace,
    apply_gates,
    boundary_gates,
    gate_scan_naive,
    hold,
    segment_lengths,
    trace_of,
)

__all__ = [
    "GateParams",
    "Gates",
    "GateTrace",
    "apply_gates",
    "boundary_gates",
    "gate_scan",
    "gate_scan_naive",
    "hold",
    "kernel_available",
    "segment_lengths",
    "trace_of",
]


def kernel_available(k, v) -> bool:
    """Whether gate_scan's kernel takes these keys and values here."""
    if not (k.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    from .triton import fits

    return fits(k.shape[-1], v.shape[-1])


def gate_scan(k, v, gamma, S0, gates: Gates, modes, rho, params: GateParams, pos0: int, impl: str = "auto"):
    """See the module docstring."""
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"gate_scan: impl={impl!r}; use 'auto', 'torch' or 'triton'")
    if impl == "triton" or (impl == "auto" and kernel_available(k, v)):
        from .triton import fits, gate_scan_triton

        if not fits(k.shape[-1], v.shape[-1]):
            raise ValueError(
                f"gate_scan: impl='triton' takes K and V powers of two in 16..128, got K={k.shape[-1]}, "
                f"V={v.shape[-1]} (use impl='auto')"
            )

        return gate_scan_triton(k, v, gamma, S0, gates, modes, rho, params, pos0)
    return gate_scan_naive(k, v, gamma, S0, gates, modes, rho, params, pos0)
