"""Learning-rate schedules as pure functions of the step, wrapped in `LambdaLR`.

Each function returns the multiplier applied to the optimizer's base lr, so values are easy to test and the
same function serves any optimizer. Noam returns the lr itself and is meant for base lr 1.0 (the original code builds
Adam with lr 0 and lets the schedule set it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def constant(step: int) -> float:
    return 1.0


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then cosine from 1 down to `min_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def noam(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """`factor * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)` with `s = max(step, 1)` ("Attention is all
    you need"; the original code)."""
    s = max(step, 1)
    return factor * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)


def multistep(step: int, milestones: Sequence[int], gammas: Sequence[float]) -> float:
    """Multiply by `gammas[i]` once `step` reaches `milestones[i]` (cumulatively)."""
    scale = 1.0
    for milestone, gamma in zip(milestones, gammas):
        if step >= milestone:
            scale *= gamma
    return scale


def hpcm_milestones(total_steps: int) -> tuple[list[int], list[float]]:
    """HPCM's epoch schedule expressed in steps: x0.3, x0.33, x0.1 at 92 %, 95 % and 98 % of training."""
    fractions, gammas = (0.92, 0.95, 0.98), [0.3, 0.33, 0.1]
    return [int(f * total_steps) for f in fractions], gammas


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, **kw) -> LambdaLR:
    """Scheduler by config name: constant | cosine | noam | multistep | hpcm."""
    if name == "constant":
        fn = constant
    elif name == "cosine":
        fn = partial(
            cosine_with_warmup,
            warmup_steps=kw.get("warmup_steps", 0),
            total_steps=total_steps,
            min_ratio=kw.get("min_ratio", 0.0),
        )
    elif name == "noam":
        if kw.get("d_model") is None:
            raise ValueError("the noam schedule scales by the model's width (d_model), and this model has none")
        fn = partial(
            noam, d_model=kw["d_model"], warmup_steps=kw.get("warmup_steps", 4000), factor=kw.get("factor", 1.0)
        )
    elif name == "multistep":
        fn = partial(multistep, milestones=list(kw["milestones"]), gammas=list(kw["gammas"]))
    elif name == "hpcm":
        milestones, gammas = hpcm_milestones(total_steps)
        fn = partial(multistep, milestones=milestones, gammas=gammas)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose constant, cosine, noam, multistep or hpcm")
    return LambdaLR(optimizer, fn)
