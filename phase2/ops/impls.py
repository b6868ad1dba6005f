"""Which implementation of an op runs: the `impl` vocabulary, the reading of TRITON_INTERPRET, the tile rule.

Every op of phase2/ops takes the same `impl` argument:
    "torch"   the PyTorch form: any device, any dtype it documents
    "triton"  the Triton kernels: CUDA tensors, or CPU tensors while Triton interprets (TRITON_INTERPRET);
              inputs they do not take raise a ValueError that says what they take
    "auto"    "triton" where the kernels can run and take the inputs, else "torch"

This module imports no Triton unless TRITON_INTERPRET is set, so CPU-only users need none.
"""

from __future__ import annotations

import importlib
import os

import torch

IMPLS = ("auto", "torch", "triton")
_RENAMED = {"naive": "torch", "loop": "torch", "fused": "triton"}  # spellings used before IMPLS
DOT_TILES = (16, 32, 64, 128)  # tl.dot needs >= 16 per side; the kernels hold such tiles in registers


def check_impl(op: str, impl) -> str:
    """impl itself when it is one of IMPLS; else a ValueError naming them (and the new name of an old one)."""
    if impl in IMPLS:
        return impl
    renamed = f" ({impl!r} is now {_RENAMED[impl]!r})" if isinstance(impl, str) and impl in _RENAMED else ""
    raise ValueError(f"{op}: impl={impl!r}{renamed}; use one of 'auto', 'torch', 'triton'")


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter: Triton's own reading of TRITON_INTERPRET.

    Triton decides when a kernel is defined, i.e. when a kernels module is imported; every kernels module
    records this at its import (INTERPRETED) and every dispatcher asks it, so the two cannot disagree.
    """
    if "TRITON_INTERPRET" not in os.environ:  # Triton's default: compile; no need to import it
        return False
    try:
        import triton
    except ImportError:  # no Triton, no interpreter
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is None:  # Triton before its knobs module (3.4) compared the variable with "1"
        return os.environ["TRITON_INTERPRET"] == "1"
    return bool(knobs.runtime.interpret)


def dot_tiles_fit(*sizes: int) -> bool:
    """The tile rule of the tl.dot kernels (Hebbian memory, gate scan): every size one of DOT_TILES."""
    return all(n in DOT_TILES for n in sizes)


def kernels_run_on(device: torch.device, kernels: str) -> bool:
    """Whether the Triton kernels of module `kernels` (a dotted name) can take tensors on this device."""
    if device.type == "cuda":
        return True
    # CPU tensors need interpreted kernels; importing the module is only worth it when they would be
    return triton_interpreting() and importlib.import_module(kernels).INTERPRETED


def choose_impl(op: str, impl, device: torch.device, kernels: str, fits: bool, takes: str) -> str:
    """The impl that runs one call of `op`: "torch" or "triton".

    fits: whether the kernels take these inputs; takes: what they take, for the error when they do not.
    """
    impl = check_impl(op, impl)
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if fits and kernels_run_on(device, kernels) else "torch"
    if not fits:
        raise ValueError(f"{op}: impl='triton' takes {takes} (impl='auto' runs PyTorch on the rest)")
    if not kernels_run_on(device, kernels):
        raise ValueError(
            f"{op}: impl='triton' on {device.type} tensors needs TRITON_INTERPRET=1 set before {kernels} is "
            "first imported (Triton fixes interpreter or compiler then); or move the tensors to CUDA"
        )
    return "triton"
