"""Balanced R-D optimizer ("Balanced Rate-Distortion Optimization in Learned Image Compression", CVPR 2025).

Cautious Adam (common.optim.cautious_adam) moves the parameters; FAMO (common.optim.famo) weights the
task losses (distortion, rate) and adapts the weights to each task's progress. One object holds both,
so a checkpoint of its state_dict() restores the task weights and their Adam state with the rest.

What the weighting does to the gradient: the weighted loss sum_i z_i log(L_i - min_i + 1e-8) / c has the
gradient sum_i w_i grad L_i with w_i = (z_i / D_i) / sum_j (z_j / D_j), D_i = L_i - min_i + 1e-8: a
convex combination. The effective rate-distortion trade-off therefore differs from a plain D + R sum
(with min_losses = -1, lambda acts as lambda (bpp + 1) / (lambda 255^2 MSE + 1), which squeezes a lambda
range), and the gradient norm that clipping (max_norm) sees is that of the combination, smaller than D + R's.

The task-weight update measures each task's progress over a parameter step, so it needs losses after
the step. Two ways, chosen by `task_weight_update`:

- "second_forward" (Balanced-RD's): a second forward on the same batch after step(), in train mode, with
  the RNG put back to where the first forward started, so noise/dropout are the same draws:

      rng = capture_rng_state()
      losses = task_losses(model(x))                       # (n_tasks,), e.g. stack([D, R])
      opt.zero_grad()
      opt.backward_with_task_balancing(losses, model.parameters())
      opt.step()
      opt.update_task_weights_replayed(lambda: task_losses(model(x)), rng)

  Cost: one more forward per step (no backward); benchmarks/results/optim.md has both variants timed.
- "next_step" (one forward): the next step's losses, before its update, stand in for the post-step
  losses. The optimizer does it by itself: get_weighted_loss()/backward_with_task_balancing() first
  updates the weights from (losses recorded last step -> losses now), then builds the weighted loss.
  Cheaper, but the progress signal then also holds the batch-to-batch difference of the losses.

Warm-up (`warmup_steps`, phase1's default 500): for the first steps the loss is the plain sum of the task
losses (D + R, what Adam minimises, with the Cautious Adam update) and the task weights stay uniform; FAMO
weighting starts after them. From scratch the weighting stalls training: while the distortion term is large
its weight z_D / D_D is small (HPCM_Base's effective lambda started ~120x below lambda), and FAMO lowers z_D
further because distortion is the task falling fastest, so the codec stayed at 11 dB for hundreds of steps
(docs/balanced_warmup.md has the measurement). No second forward runs during warm-up.

The task weights follow the losses this process sees. Under DistributedDataParallel give every process the
same, global losses: common.runtime.globalize(stack([D, R])) has the all-reduced mean as its value and the
local gradient (phase1.train does this for the weighted loss and for the second forward), so FAMO weights and
updates identically on every rank in both variants while DDP averages the gradients.

The original code's call form still works: backward_with_task_balancing(task_losses, params), step(task_losses=...),
update_task_weights(new_task_losses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from .cautious_adam import CautiousAdam
from .famo import FAMO

TASK_WEIGHT_UPDATES = ("second_forward", "next_step")


def capture_rng_state() -> dict:
    """The CPU generator's state and, once CUDA is in use, every CUDA device's (tensors, no host sync)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def replayed_rng(state: dict) -> Iterator[None]:
    """Run the block with the RNG as captured; afterwards the RNG is where it was before the block,
    so a replayed forward draws the same noise as the first and leaves the random stream untouched."""
    now = capture_rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(now)


class Balanced(CautiousAdam):
    def __init__(
        self,
        params: Iterable,
        *,
        n_tasks: int = 2,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gamma: float = 0.003,  # weight decay of the task logits: pulls the weights back to uniform
        w_lr: float = 0.025,  # Adam learning rate of the task logits
        max_norm: float = 1.0,  # gradient clipping in backward_with_task_balancing (0: off)
        mask_scale_max: float = 10.0,
        mask_scaling: str = "balanced_rd",
        task_weight_update: str = "second_forward",
        min_losses: Sequence[float] | torch.Tensor | None = None,  # Balanced-RD trains with -1 per task
        warmup_steps: int = 0,  # steps of the plain summed loss before FAMO weighting starts
        impl: str = "auto",
    ):
        if task_weight_update not in TASK_WEIGHT_UPDATES:
            raise ValueError(f"task_weight_update={task_weight_update!r}: choose one of {TASK_WEIGHT_UPDATES}")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"warmup_steps={warmup_steps!r} must be a whole number >= 0")
        super().__init__(params, lr, betas, eps, weight_decay, mask_scale_max, mask_scaling=mask_scaling, impl=impl)
        self.task_weight_update = task_weight_update
        self.famo = FAMO(n_tasks, gamma=gamma, w_lr=w_lr, max_norm=max_norm)
        if min_losses is not None:
            self.famo.set_min_losses(min_losses)
        self._stepped = False  # a parameter step happened since the last recorded losses
        self.warmup_steps = warmup_steps
        self._steps_done = 0
        self._weighted: bool | None = None  # the last loss was FAMO-weighted; False: warm-up; None: no loss yet

    @property
    def task_weights(self) -> torch.Tensor:
        """Current task weights z = softmax(logits), shape (n_tasks,)."""
        return self.famo.weights

    @property
    def min_losses(self) -> torch.Tensor:
        return self.famo.min_losses

    def set_min_losses(self, losses: Sequence[float] | torch.Tensor) -> None:
        self.famo.set_min_losses(losses)

    @property
    def weighted(self) -> bool:
        """Whether the last loss (and so the step taken on it) was FAMO-weighted: False during warm-up."""
        return bool(self._weighted)

    def gradient_weights(self, task_losses: torch.Tensor) -> torch.Tensor:
        """(n_tasks,) weights of each task's gradient in the last step, taken on task_losses: ones in warm-up (the
        plain sum), else FAMO's convex combination. For (distortion, rate) the step is the one plain R-D
        training would take at lambda * w_D / w_R: the effective lambda."""
        if not self._weighted:
            return torch.ones_like(task_losses)
        return self.famo.gradient_weights(task_losses)

    def get_weighted_loss(self, task_losses: torch.Tensor) -> torch.Tensor:
        """FAMO's weighted loss of task_losses (n_tasks,); with "next_step", first the pending weight update.
        During warm-up: their plain sum, and the task weights stay as they are."""
        self._weighted = self._steps_done >= self.warmup_steps
        if not self._weighted:
            self._stepped = False
            return task_losses.sum()
        if self.task_weight_update == "next_step" and self._stepped and self.famo.prev_losses is not None:
            self.famo.to(task_losses.device)
            self.famo.update(task_losses.detach())
        self._stepped = False
        return self.famo.get_weighted_loss(task_losses)

    def backward_with_task_balancing(
        self, task_losses: torch.Tensor, shared_params: Iterable[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Backward of the weighted loss, then clip shared_params' gradient norm to max_norm."""
        loss = self.get_weighted_loss(task_losses)
        loss.backward()
        if self.famo.max_norm > 0 and shared_params is not None:
            torch.nn.utils.clip_grad_norm_(shared_params, self.famo.max_norm)
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, task_losses: torch.Tensor | None = None):
        """Cautious Adam step. task_losses (optional, the original code's call form): the losses this step's
        gradient came from; they become the starting point of the next task-weight update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if task_losses is not None and self._weighted is not False:
            self.famo.record(task_losses)
        self._update_params()
        self._stepped = self._weighted is not False
        self._steps_done += 1
        return loss

    def update_task_weights(self, new_task_losses: torch.Tensor) -> None:
        """FAMO update from the recorded losses to new_task_losses (the same batch after the step); nothing
        after a warm-up step."""
        if self._weighted is not False:
            self.famo.update(new_task_losses)

    @torch.no_grad()
    def update_task_weights_replayed(self, task_losses_fn: Callable[[], torch.Tensor], rng_state: dict) -> torch.Tensor:
        """The "second_forward" update: run task_losses_fn() (a forward on the same batch, model left in
        train mode, so BatchNorm running statistics would see the batch twice) with the RNG as in
        rng_state = capture_rng_state() taken before the first forward, update the task weights from it,
        and return those losses."""
        with replayed_rng(rng_state):
            new = task_losses_fn()
        self.update_task_weights(new)
        return new.detach()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["task_balancing"] = {
            **self.famo.state_dict(),
            "stepped": self._stepped,
            "steps_done": self._steps_done,
            "weighted": self._weighted,
            "warmup_steps": self.warmup_steps,  # a resumed run keeps the warm-up it started with
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        balancing = state.pop("task_balancing", None)
        if balancing is None:
            raise ValueError(
                "this optimizer state has no 'task_balancing' entry, so it was not saved by "
                "Balanced; load it into the optimizer that wrote it (e.g. CautiousAdam/Adam)"
            )
        super().load_state_dict(state)
        self.famo.load_state_dict(balancing)
        self._stepped = bool(balancing["stepped"])
        self.warmup_steps = int(balancing.get("warmup_steps", self.warmup_steps))
        # states saved before warm-up existed were always weighted
        self._steps_done = int(balancing.get("steps_done", self.warmup_steps))
        self._weighted = balancing.get("weighted", True)

    def save_state(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    def load_state(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no optimizer state at {path}; pass the file written by save_state()")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
