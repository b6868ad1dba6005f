"""FAMO task weighting ("FAMO: Fast Adaptive Multitask Optimization", Liu et al., NeurIPS 2023).

State: logits w (zeros at start), task weights z = softmax(w), the tasks' lower bounds min_losses.

Weighted loss, for task losses L (n_tasks,):

    D = L - min_losses + 1e-8
    c = sum(z / D)                      (detached)
    loss = sum(z * log D) / c

Its gradient is sum_i (z_i / (c D_i)) grad L_i: a convex combination sum_i w_i grad L_i with
w_i = (z_i / D_i) / sum_j (z_j / D_j). So with two tasks D (distortion) and R (rate) the effective
trade-off is not the one a plain D + R sum would give: with min_losses = -1 (D_i = L_i + 1, what
Balanced-RD trains with) the effective lambda becomes lambda (bpp + 1) / (lambda 255^2 MSE + 1), and
the gradient norm that clipping sees is that of a convex combination, smaller than plain D + R's.

Weight update, after the model moved on losses L_prev (recorded by get_weighted_loss) to L_curr:

    delta  = log(L_prev - min + 1e-8) - log(L_curr - min + 1e-8)     # each task's log-progress
    grad_w = J_softmax(w)^T delta = z * (delta - <z, delta>)
    w      = Adam step on grad_w + gamma * w (torch.optim.Adam with weight_decay=gamma, lr=w_lr)

A task whose loss falls more slowly than the others' gains weight. Everything stays on the losses'
device (no host sync); all state is tensors or plain Python, so torch.load(weights_only=True) reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

EPS = 1e-8  # keeps log(L - min) finite when a loss reaches its lower bound


class FAMO:
    def __init__(
        self,
        n_tasks: int,
        gamma: float = 0.01,
        w_lr: float = 0.025,
        max_norm: float = 1.0,
        *,
        betas: tuple[float, float] = (0.9, 0.999),  # the logits' Adam, as in the paper's code
        adam_eps: float = 1e-8,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        if not (isinstance(n_tasks, int) and n_tasks >= 2):
            raise ValueError(f"n_tasks={n_tasks!r} must be an int >= 2 (one weight per task loss)")
        if not gamma >= 0.0:
            raise ValueError(f"gamma={gamma} must be >= 0")
        if not w_lr > 0.0:
            raise ValueError(f"w_lr={w_lr} must be > 0")
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm={max_norm} must be >= 0 (0 disables clipping)")
        self.n_tasks, self.gamma, self.w_lr, self.max_norm = n_tasks, gamma, w_lr, max_norm
        self.betas, self.adam_eps = tuple(betas), adam_eps
        zeros = torch.zeros(n_tasks, dtype=dtype, device=device)
        self.w = zeros.clone()  # logits
        self.min_losses = zeros.clone()
        self.exp_avg, self.exp_avg_sq, self.step_count = zeros.clone(), zeros.clone(), 0
        self.prev_losses: torch.Tensor | None = None  # losses the last weighted loss was built from
        self._prev_log_d: torch.Tensor | None = None  # log(prev_losses - min_losses + EPS), kept from the loss

    @property
    def weights(self) -> torch.Tensor:
        """Current task weights z = softmax(w), shape (n_tasks,)."""
        return torch.softmax(self.w, -1)

    def set_min_losses(self, losses: torch.Tensor | Sequence[float]) -> None:
        self.min_losses = self._as_losses(losses, "min_losses").to(self.w.device, self.w.dtype).clone()
        if self.prev_losses is not None:
            self._prev_log_d = self._log_d(self.prev_losses)

    def get_weighted_loss(self, losses: torch.Tensor) -> torch.Tensor:
        losses = self._as_losses(losses, "losses")
        self.to(losses.device)
        z = self.weights
        d = losses - self.min_losses + EPS  # (n_tasks,)
        log_d = d.log()
        self.prev_losses, self._prev_log_d = losses.detach().to(self.w.dtype), log_d.detach().to(self.w.dtype)
        return torch.dot(z.to(log_d.dtype), log_d) / (z / d).sum().detach()

    def gradient_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """w_i = (z_i / D_i) / sum_j (z_j / D_j): the weighted loss's gradient is sum_i w_i grad L_i."""
        losses = self._as_losses(losses, "losses").detach()
        ratio = self.weights.to(losses.device) / (losses - self.min_losses.to(losses.device) + EPS)
        return ratio / ratio.sum()

    def record(self, losses: torch.Tensor) -> None:
        """Remember the losses the coming parameter step starts from (update() measures progress from them)."""
        losses = self._as_losses(losses, "losses")
        self.to(losses.device)
        self.prev_losses = losses.detach().to(self.w.dtype)
        self._prev_log_d = self._log_d(self.prev_losses)

    def backward(self, losses: torch.Tensor, shared_parameters: Iterable[torch.Tensor] | None = None) -> torch.Tensor:
        """Backward of the weighted loss, then clip shared_parameters' gradient norm to max_norm."""
        loss = self.get_weighted_loss(losses)
        loss.backward()
        if self.max_norm > 0 and shared_parameters is not None:
            torch.nn.utils.clip_grad_norm_(shared_parameters, self.max_norm)
        return loss

    @torch.no_grad()
    def update(self, curr_losses: torch.Tensor) -> None:
        """One Adam step on the logits from the progress prev_losses -> curr_losses."""
        if self.prev_losses is None:
            raise RuntimeError(
                "FAMO.update() needs the losses of a weighted loss first: "
                "call get_weighted_loss() or backward() before update()"
            )
        curr = self._as_losses(curr_losses, "curr_losses").detach().to(self.w.device, self.w.dtype)
        delta = self._prev_log_d - self._log_d(curr)  # (n_tasks,): each task's log-progress
        z = self.weights
        zd = z * delta
        grad = torch.addcmul(zd, z, zd.sum(), value=-1)  # J_softmax^T delta = z (delta - <z, delta>)
        if self.gamma != 0:
            grad.add_(self.w, alpha=self.gamma)  # Adam's (coupled) weight decay
        b1, b2 = self.betas
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**self.step_count)).add_(self.adam_eps)
        self.w.addcdiv_(self.exp_avg, denom, value=-self.w_lr / (1 - b1**self.step_count))

    def state_dict(self) -> dict:
        return {
            "n_tasks": self.n_tasks,
            "gamma": self.gamma,
            "w_lr": self.w_lr,
            "max_norm": self.max_norm,
            "betas": self.betas,
            "adam_eps": self.adam_eps,
            "logits": self.w.clone(),
            "min_losses": self.min_losses.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "step": self.step_count,
            "prev_losses": None if self.prev_losses is None else self.prev_losses.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["n_tasks"] != self.n_tasks:
            raise ValueError(
                f"checkpoint has n_tasks={state['n_tasks']} but this FAMO has "
                f"n_tasks={self.n_tasks}; build it with n_tasks={state['n_tasks']}"
            )
        like = dict(dtype=self.w.dtype, device=self.w.device)
        self.gamma, self.w_lr, self.max_norm = state["gamma"], state["w_lr"], state["max_norm"]
        self.betas, self.adam_eps = tuple(state["betas"]), state["adam_eps"]
        self.w = state["logits"].to(**like).clone()
        self.min_losses = state["min_losses"].to(**like).clone()
        self.exp_avg = state["exp_avg"].to(**like).clone()
        self.exp_avg_sq = state["exp_avg_sq"].to(**like).clone()
        self.step_count = int(state["step"])
        prev = state["prev_losses"]
        self.prev_losses = None if prev is None else prev.to(**like).clone()
        self._prev_log_d = None if prev is None else self._log_d(self.prev_losses)

    def _log_d(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses - self.min_losses + EPS).log()

    def _as_losses(self, losses, name: str) -> torch.Tensor:
        t = losses if isinstance(losses, torch.Tensor) else torch.tensor(losses, dtype=self.w.dtype)
        if t.shape != (self.n_tasks,):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected ({self.n_tasks},), one loss per "
                "task (e.g. torch.stack([distortion, rate]))"
            )
        return t

    def to(self, device: torch.device | str) -> FAMO:
        """Move the state to the losses' device (done on first use), so updates need no host sync."""
        device = torch.device(device)
        if self.w.device == device:
            return self
        for name in ("w", "min_losses", "exp_avg", "exp_avg_sq"):
            setattr(self, name, getattr(self, name).to(device))
        if self.prev_losses is not None:
            self.prev_losses, self._prev_log_d = self.prev_losses.to(device), self._prev_log_d.to(device)
        return self
