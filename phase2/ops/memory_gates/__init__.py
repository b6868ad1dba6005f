"""The Hebbian memory's gates (SNR filter, memory resonance, Lyapunov adjustment) over one call (README.md).

    trace = gate_scan(k, v, gamma, S0, gates, modes, rho, params, pos0, impl="auto")

types.py holds the dataclasses, reference.py the rule in PyTorch and the reference scan (impl="torch"),
kernels.py the scan as one Triton kernel (impl="triton"), dispatch.py the choice between them.
"""

from .dispatch import gate_scan, kernel_available, kernel_fits
from .reference import apply_gates, boundary_gates, gate_scan_reference, hold, segment_lengths, trace_of
from .types import GateParams, Gates, GateTrace

__all__ = [
    "GateParams",
    "GateTrace",
    "Gates",
    "apply_gates",
    "boundary_gates",
    "gate_scan",
    "gate_scan_reference",
    "hold",
    "kernel_available",
    "kernel_fits",
    "segment_lengths",
    "trace_of",
]
