"""Process-level concerns shared by every entry point: seeding, device and precision, distributed setup,
RNG state capture for exact resume, and turning SIGINT/SIGTERM into a clean "checkpoint and exit"."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(preference: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else the CPU; an explicit request that cannot be met is an error."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: nothing here runs on them
        raise ValueError(f"device={preference!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={preference!r} was requested but CUDA is not available; use device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={preference!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={preference!r} was requested but this PyTorch has no MPS (Apple GPU) support")
    return device


def device_name(device: torch.device) -> str:
    """What a run ran on, for its record: "cuda:0 (NVIDIA H200)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'s' if threads > 1 else ''})"


_AUTOCAST_DTYPES = {"32": None, "fp32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for the forward pass; `32` is a no-op.

    Precision names follow Lightning's (`32`, `bf16-mixed`, `16-mixed`); `precision=32` on a command line
    arrives as the integer 32."""
    precision = str(precision)
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r} is not one of {sorted(_AUTOCAST_DTYPES)}")
    dtype = _AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG a training step may draw from, as tensors (so `torch.load(weights_only=True)` reads it)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(_numpy_state_array()),
        "python": torch.tensor(_python_state_list(), dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    _set_numpy_state_array(state["numpy"].numpy())
    _set_python_state_list(state["python"].tolist())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))


def _numpy_state_array() -> np.ndarray:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    # MT19937 keys (624 uint32) + position + gaussian cache, packed as int64 so it is one tensor.
    return np.concatenate([keys.astype(np.int64), [pos, has_gauss], [np.float64(cached).view(np.int64)]])


def _set_numpy_state_array(arr: np.ndarray) -> None:
    keys = arr[:624].astype(np.uint32)
    pos, has_gauss = int(arr[624]), int(arr[625])
    cached = np.int64(arr[626]).view(np.float64)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(cached)))


def _python_state_list() -> list[int]:
    version, internal, gauss = random.getstate()
    # internal is 625 ints (< 2**32); the gaussian cache is None or a float stored by its bit pattern.
    gauss_bits = -1 if gauss is None else int(np.float64(gauss).view(np.int64))
    return [version, *internal, gauss_bits]


def _set_python_state_list(values: list[int]) -> None:
    version, internal, gauss_bits = values[0], tuple(values[1:-1]), values[-1]
    gauss = None if gauss_bits == -1 else float(np.int64(gauss_bits).view(np.float64))
    random.setstate((version, internal, gauss))


# ----------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints notes."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that `torchrun` describes through its environment; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def globalize(values: torch.Tensor) -> torch.Tensor:
    """The mean over all ranks as the value, the local tensor's gradient as the gradient.

    For losses under DistributedDataParallel: every rank then logs, checks for non-finite values and weights
    (Balanced's FAMO) the same global numbers, while backward stays local and DDP averages the gradients,
    which is the gradient of the global mean. A no-op in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return values + (total / dist.get_world_size() - values).detach()


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- signals
class StopRequest:
    """Remembers SIGINT/SIGTERM instead of dying mid-step, so the loop can checkpoint and exit cleanly.

    A second signal of the same kind falls through to the default handler (a user can still force-quit)."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum

    def __bool__(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (tests may run the loop elsewhere).
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
