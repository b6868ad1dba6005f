"""Cautious Adam: AdamW whose update is masked where momentum and gradient disagree in sign.

The step, per parameter tensor p with gradient g, step count t (Balanced-RD's variant, the default):

    p    *= 1 - lr * weight_decay                     # decoupled weight decay (AdamW)
    m     = b1 * m + (1 - b1) * g
    v     = b2 * v + (1 - b2) * g * g
    denom = sqrt(v) / sqrt(1 - b2^t) + eps
    mask  = (m * g > 0)                               # 1 where momentum and gradient agree
    mask *= clamp(1 / clamp(mean(mask), min=1e-3), max=mask_scale_max)
    p    -= lr / (1 - b1^t) * m * mask / denom

The rescaling keeps the update's size when part of it is masked. `mask_scaling="paper"` uses the
Cautious Optimizers paper's factor numel / (sum(mask) + 1) instead (mask_scale_max is then unused).
`cautious=False` drops the mask: the step is then exactly AdamW's (an ablation switch). Sparse and
complex gradients are refused with a ValueError.

Two implementations, chosen by `impl` ("auto" picks "triton" where it applies, else "torch"; the same
vocabulary as the phase2 ops), give the same numbers up to float32 rounding
(tests/common/test_optim_cautious_adam.py compares them):
- "torch": one tensor at a time with PyTorch ops; any device and dtype; the reference.
- "triton": two Triton kernels over all float32 tensors of a group (moments + per-tensor mask count,
  then the masked update): per element it reads/writes 10 floats, AdamW(foreach=True) about 18.
  Used by default ("auto") for contiguous float32 CUDA tensors; runs on the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch

try:  # Triton is optional: without it every step takes the loop path
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

MASK_SCALINGS = ("balanced_rd", "paper")
IMPLS = ("auto", "torch", "triton")
_RENAMED = {"loop": "torch", "fused": "triton"}  # the spellings before IMPLS
_BLOCK = 1024  # elements per Triton program; each program belongs to exactly one tensor


class CautiousAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mask_scale_max: float = 10.0,
        *,
        mask_scaling: str = "balanced_rd",
        cautious: bool = True,
        impl: str = "auto",
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr={lr} must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas={betas} must each lie in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"eps={eps} must be >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        if not mask_scale_max >= 1.0:
            raise ValueError(f"mask_scale_max={mask_scale_max} must be >= 1 (1 disables the rescaling)")
        if mask_scaling not in MASK_SCALINGS:
            raise ValueError(f"mask_scaling={mask_scaling!r}: choose one of {MASK_SCALINGS}")
        if impl not in IMPLS:
            renamed = f" ({impl!r} is now {_RENAMED[impl]!r})" if isinstance(impl, str) and impl in _RENAMED else ""
            raise ValueError(f"impl={impl!r}{renamed}: choose one of {IMPLS}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            mask_scale_max=mask_scale_max,
            mask_scaling=mask_scaling,
            cautious=cautious,
        )
        super().__init__(params, defaults)
        self.impl = impl
        self._fused_cache: dict = {}  # device-side address/block tables, rebuilt when tensors move

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update_params()
        return loss

    def _update_params(self) -> None:
        # kept apart from step() so that subclasses overriding step() do not run the step hooks twice
        for gi, group in enumerate(self.param_groups):
            params, states = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_grad(p)
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                states.append(state)
            if not params or (self.impl != "torch" and self._fused_step(gi, group, params, states)):
                continue
            for p, s in zip(params, states):
                _loop_update(p, p.grad, s["exp_avg"], s["exp_avg_sq"], s["step"], group)

    def _fused_step(self, gi: int, group: dict, params: list, states: list) -> bool:
        """Step the group with the Triton kernels; False where they do not apply (impl='auto')."""
        tensors = [x for p, s in zip(params, states) for x in (p, p.grad, s["exp_avg"], s["exp_avg_sq"])]
        ptrs = tuple(x.data_ptr() for x in tensors)  # (4N,): same as last step -> same tensors, checked then
        if self._fused_cache.get(("checked", gi)) != ptrs:
            if not _fused_supported(tensors, self.impl):
                if self.impl == "triton":
                    raise ValueError(
                        "impl='triton' needs contiguous float32 parameters and gradients on one CUDA "
                        "device (or TRITON_INTERPRET=1 on the CPU); impl='auto' falls back to impl='torch'"
                    )
                return False
            self._fused_cache[("checked", gi)] = ptrs
        # tensors of one group share lr/betas but may differ in step count (a parameter that had no gradient
        # on some step): one launch per distinct count, each with its own cached tables
        by_step: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            by_step.setdefault(s["step"], []).append(i)
        for t, idx in by_step.items():
            key = gi if len(by_step) == 1 else (gi, tuple(idx))
            sub = ptrs if len(by_step) == 1 else tuple(ptrs[4 * i + j] for i in idx for j in range(4))
            plan = self._fused_cache.get(key)
            if plan is None or plan[0] != sub:  # the caching allocator mostly hands back the same addresses
                plan = self._fused_cache[key] = (sub, *_tables(sub, [params[i].numel() for i in idx], params[0].device))
            _launch(plan[1:], t, group)
        return True


def _hyper(group: dict) -> tuple:
    """lr, betas, eps, weight_decay as Python numbers (a scheduler may have left lr as a 0-d tensor)."""
    lr = group["lr"]
    return (float(lr) if isinstance(lr, torch.Tensor) else lr), group["betas"], group["eps"], group["weight_decay"]


def _check_grad(p: torch.Tensor) -> None:
    if p.grad.is_sparse:
        raise ValueError(
            f"CautiousAdam got a sparse gradient for a parameter of shape {tuple(p.shape)}; "
            "use dense gradients (e.g. nn.Embedding(sparse=False))"
        )
    if p.is_complex() or p.grad.is_complex():
        raise ValueError(
            f"CautiousAdam got a complex parameter of shape {tuple(p.shape)}; "
            "optimise torch.view_as_real(p) as a real parameter instead"
        )


def _mask_scale(mask: torch.Tensor, group: dict) -> torch.Tensor:
    """Factor that restores the update's size after masking (a 0-d tensor, no host sync)."""
    if group["mask_scaling"] == "paper":
        return mask.numel() / (mask.sum() + 1)
    return (1 / mask.mean().clamp(min=1e-3)).clamp(max=group["mask_scale_max"])


def _loop_update(p, g, m, v, t: int, group: dict) -> None:
    lr, (b1, b2), eps, wd = _hyper(group)
    if wd != 0:
        p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - b1)  # = b1 m + (1 - b1) g, in one pass
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    step_size, bc2_sqrt = lr / (1 - b1**t), math.sqrt(1 - b2**t)
    if not group["cautious"]:
        p.addcdiv_(m, v.sqrt().div_(bc2_sqrt).add_(eps), value=-step_size)
        return
    mask = torch.mul(m, g).gt_(0)  # 1.0 where momentum and gradient agree, else 0.0
    scale = _mask_scale(mask, group)  # a 0-d tensor: no host sync on a GPU
    # m * mask * scale / (sqrt(v) / bc2_sqrt + eps), the scale moved into the denominator (one pass fewer)
    denom = v.sqrt().div_(bc2_sqrt * scale).add_(eps / scale)
    p.addcdiv_(mask.mul_(m), denom, value=-step_size)


# ----------------------------------------------------------------------------- fused (Triton) path


def _interpreting() -> bool:
    """Triton's own reading of TRITON_INTERPRET, as phase2/ops/impls.py:triton_interpreting reads it."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is None:  # Triton before its knobs module (3.4) compared the variable with "1"
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


def _fused_supported(tensors: list[torch.Tensor], impl: str) -> bool:
    dev = tensors[0].device
    if triton is None or not (dev.type == "cuda" or (impl == "triton" and dev.type == "cpu" and _interpreting())):
        return False
    return all(
        x.dtype == torch.float32 and x.device == dev and x.is_contiguous() and x.numel() < 2**31 - _BLOCK
        for x in tensors
    )


_KERNELS: list = []


def _kernels():
    """Wrapped on first use, so importing this module compiles nothing. TRITON_INTERPRET=1 (CPU runs)
    must be set before Triton is imported: tl.sum and friends are jit functions made at that import."""
    if not _KERNELS:
        _KERNELS.extend([triton.jit(_moments_kernel), triton.jit(_update_kernel)])
    return _KERNELS


def _tables(ptrs: tuple[int, ...], numels: list[int], dev: torch.device) -> tuple:
    """Device-side tables: tensor addresses (4N,) and, per program, its tensor and first element."""
    nblocks = torch.tensor([(n + _BLOCK - 1) // _BLOCK for n in numels])  # (N,)
    block_tensor = torch.repeat_interleave(torch.arange(len(numels)), nblocks)  # (B,)
    first_block = torch.cumsum(nblocks, 0) - nblocks  # (N,)
    block_start = (torch.arange(block_tensor.numel()) - first_block[block_tensor]) * _BLOCK  # (B,)
    ints = [x.to(torch.int32).to(dev) for x in (block_tensor, block_start, torch.tensor(numels))]
    return (torch.tensor(ptrs, dtype=torch.int64).to(dev), *ints)


def _launch(tables: tuple, t: int, group: dict) -> None:
    ptr_table, block_tensor, block_start, numel_t = tables
    dev = ptr_table.device
    counts = torch.zeros(numel_t.numel(), dtype=torch.int32, device=dev)  # agreeing elements per tensor
    lr, (b1, b2), eps, wd = _hyper(group)
    moments, update = _kernels()
    grid = (block_tensor.numel(),)
    other_gpu = dev.type == "cuda" and dev.index != torch.cuda.current_device()
    with torch.cuda.device(dev) if other_gpu else nullcontext():
        moments[grid](ptr_table, block_tensor, block_start, numel_t, counts, b1, b2, BLOCK=_BLOCK)
        update[grid](
            ptr_table,
            block_tensor,
            block_start,
            numel_t,
            counts,
            1 - lr * wd,
            lr / (1 - b1**t),
            math.sqrt(1 - b2**t),
            eps,
            group["mask_scale_max"],
            CAUTIOUS=bool(group["cautious"]),
            PAPER=group["mask_scaling"] == "paper",
            BLOCK=_BLOCK,
        )


# The two kernels below are plain functions wrapped by triton.jit in _kernels(). Pointer table layout:
# for tensor i, entries 4i..4i+3 hold the addresses of p, grad, exp_avg, exp_avg_sq.


def _moments_kernel(ptr_table, block_tensor, block_start, numels, counts, b1, b2, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    inb = offs < tl.load(numels + t)
    f32 = tl.pointer_type(tl.float32)
    base = ptr_table + 4 * t.to(tl.int64)
    g_ptr, m_ptr, v_ptr = tl.load(base + 1).to(f32), tl.load(base + 2).to(f32), tl.load(base + 3).to(f32)
    g = tl.load(g_ptr + offs, mask=inb, other=0.0)
    m = tl.load(m_ptr + offs, mask=inb, other=0.0) * b1 + (1 - b1) * g
    v = tl.load(v_ptr + offs, mask=inb, other=0.0) * b2 + (1 - b2) * g * g
    tl.store(m_ptr + offs, m, mask=inb)
    tl.store(v_ptr + offs, v, mask=inb)
    agree = ((m * g) > 0) & inb
    tl.atomic_add(counts + t, tl.sum(agree.to(tl.int32), axis=0))  # integer sum: deterministic


def _update_kernel(
    ptr_table,
    block_tensor,
    block_start,
    numels,
    counts,
    decay,
    step_size,
    bc2_sqrt,
    eps,
    scale_max,
    CAUTIOUS: tl.constexpr,
    PAPER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    n = tl.load(numels + t)
    offs = tl.load(block_start + pid) + tl.arange(0, BLOCK)
    inb = offs < n
    f32 = tl.pointer_type(tl.float32)
    base = ptr_table + 4 * t.to(tl.int64)
    p_ptr, g_ptr = tl.load(base).to(f32), tl.load(base + 1).to(f32)
    m_ptr, v_ptr = tl.load(base + 2).to(f32), tl.load(base + 3).to(f32)
    p = tl.load(p_ptr + offs, mask=inb, other=0.0)
    m = tl.load(m_ptr + offs, mask=inb, other=0.0)
    v = tl.load(v_ptr + offs, mask=inb, other=0.0)
    denom = tl.sqrt(v) / bc2_sqrt + eps
    if CAUTIOUS:
        g = tl.load(g_ptr + offs, mask=inb, other=0.0)
        cnt = tl.load(counts + t).to(tl.float32)
        if PAPER:
            scale = n.to(tl.float32) / (cnt + 1.0)
        else:
            scale = tl.minimum(1.0 / tl.maximum(cnt / n.to(tl.float32), 1e-3), scale_max)
        m = tl.where((m * g) > 0, m * scale, 0.0)
    tl.store(p_ptr + offs, p * decay - step_size * (m / denom), mask=inb)
