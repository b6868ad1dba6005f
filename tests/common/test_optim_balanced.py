"""Balanced = Cautious Adam + FAMO: balancing on a toy problem, both task-weight update variants,
RNG replay of the second forward, determinism, checkpoints, and the original code's call form."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from common.optim import FAMO, Balanced, CautiousAdam, capture_rng_state, replayed_rng


def two_quadratics(d=16, seed=0):
    """Two conflicting tasks 10^4 apart in scale; each has an irreducible part (the +1) so log L stays bounded."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    a, b = 2 * a / a.norm(), 2 * b / b.norm()
    return lambda x: torch.stack([100.0 * (((x - a) ** 2).sum() + 1), 0.01 * (((x - b) ** 2).sum() + 1)])


def train_toy(optimizer: str, steps=300, lr=0.02, mode="second_forward"):
    losses_fn = two_quadratics()
    x = torch.zeros(16, requires_grad=True)
    start = losses_fn(x).detach()
    if optimizer == "adam":
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            losses_fn(x).sum().backward()
            opt.step()
    else:
        opt = Balanced([x], lr=lr, task_weight_update=mode)
        for _ in range(steps):
            opt.zero_grad()
            opt.backward_with_task_balancing(losses_fn(x), [x])
            opt.step()
            if mode == "second_forward":
                with torch.no_grad():
                    opt.update_task_weights(losses_fn(x))
    return losses_fn(x).detach() / start, x.detach(), opt  # relative progress of each task


def test_balanced_progresses_on_both_tasks_where_summed_adam_sacrifices_one():
    r_adam, _, _ = train_toy("adam")
    r_bal, _, _ = train_toy("balanced")
    assert r_adam[0] < 0.25 and r_adam[1] > 1.2  # the large task wins; the small one got worse
    assert (r_bal < 0.8).all()  # both tasks improved
    imbalance = lambda r: abs(math.log(r[0] / r[1]))  # noqa: E731
    assert imbalance(r_bal) < 0.5 * imbalance(r_adam)


def test_variants_coincide_on_a_deterministic_full_batch_problem():
    """Without batch noise, the next step's pre-update losses ARE the post-step losses: same trajectory."""
    _, x_two, opt_two = train_toy("balanced", steps=40, mode="second_forward")
    _, x_one, opt_one = train_toy("balanced", steps=40, mode="next_step")
    assert torch.equal(x_two, x_one)
    assert opt_one.famo.step_count == opt_two.famo.step_count - 1  # the last update waits for a next step


def test_next_step_variant_updates_through_the_optimizer_api():
    torch.manual_seed(0)
    x = torch.randn(4, requires_grad=True)
    opt = Balanced([x], task_weight_update="next_step", gamma=0.01)
    ref = FAMO(2, gamma=0.01)
    batches = [torch.randn(4) for _ in range(5)]
    for i, t in enumerate(batches):
        losses = torch.stack([((x - t) ** 2).sum(), (x - t).abs().sum()])
        if i > 0:
            ref.update(losses.detach())  # progress from the previous step's losses to these
        ref.get_weighted_loss(losses.detach())
        opt.zero_grad()
        opt.backward_with_task_balancing(losses, [x])
        opt.step()
        torch.testing.assert_close(opt.task_weights, ref.weights, rtol=0, atol=0)
    assert opt.famo.step_count == 4 and not torch.equal(ref.weights, torch.full((2,), 0.5))
    # a second weighted loss without a step in between (gradient accumulation) does not update again
    opt.get_weighted_loss(torch.ones(2))
    w = opt.task_weights.clone()
    opt.get_weighted_loss(torch.full((2,), 0.5))
    assert torch.equal(opt.task_weights, w)


class NoisyModel(nn.Module):
    """Dropout and additive uniform noise: a second forward matches the first only with the same draws."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 8))

    def task_losses(self, x):
        y = self.net(x)
        y_noisy = y + torch.rand_like(y) - 0.5
        return torch.stack([((y_noisy - x) ** 2).mean(), torch.log1p(y_noisy.abs()).mean()])


def test_replayed_second_forward_sees_the_same_noise_and_leaves_the_stream_alone():
    torch.manual_seed(0)
    model, x = NoisyModel().train(), torch.randn(16, 8)
    rng = capture_rng_state()
    first = model.task_losses(x)
    after_first = torch.get_rng_state()
    with replayed_rng(rng), torch.no_grad():
        again = model.task_losses(x)
    assert torch.equal(first.detach(), again)
    assert torch.equal(torch.get_rng_state(), after_first)
    with torch.no_grad():
        assert not torch.equal(model.task_losses(x), again)  # without replay the draws differ


def train_noisy(seed, steps=6, mode="second_forward", opt_state=None):
    torch.manual_seed(seed)
    model = NoisyModel().train()
    opt = Balanced(model.parameters(), lr=1e-2, task_weight_update=mode, min_losses=[-1.0, -1.0])
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    data = torch.randn(steps, 16, 8)
    for x in data:
        rng = capture_rng_state()
        losses = model.task_losses(x)
        opt.zero_grad()
        opt.backward_with_task_balancing(losses, model.parameters())
        opt.step()
        if mode == "second_forward":
            opt.update_task_weights_replayed(lambda x=x: model.task_losses(x), rng)
    return model, opt


@pytest.mark.parametrize("mode", ["second_forward", "next_step"])
def test_same_seed_gives_bitwise_equal_parameters(mode):
    m1, o1 = train_noisy(7, mode=mode)
    m2, o2 = train_noisy(7, mode=mode)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert torch.equal(o1.task_weights, o2.task_weights)
    assert not torch.equal(o1.task_weights, torch.full((2,), 0.5))
    m3, _ = train_noisy(8, mode=mode)
    assert not all(torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters()))


@pytest.mark.parametrize("mode", ["second_forward", "next_step"])
def test_checkpoint_restores_task_weights_and_continues_identically(tmp_path, mode):
    torch.manual_seed(0)
    model = NoisyModel().train()
    opt = Balanced(model.parameters(), lr=1e-2, task_weight_update=mode, min_losses=[-1.0, -1.0])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = torch.randn(8, 16, 8)

    def train(model, opt, sched, batches):
        for x in batches:
            rng = capture_rng_state()
            opt.zero_grad()
            opt.backward_with_task_balancing(model.task_losses(x), model.parameters())
            opt.step()
            sched.step()
            if mode == "second_forward":
                opt.update_task_weights_replayed(lambda x=x: model.task_losses(x), rng)

    train(model, opt, sched, data[:4])
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "rng": torch.get_rng_state(),
        },
        buf,
    )
    ckpt = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    model2 = NoisyModel().train()
    model2.load_state_dict(ckpt["model"])
    opt2 = Balanced(model2.parameters(), lr=1.0, task_weight_update=mode)
    opt2.load_state_dict(ckpt["opt"])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    sched2.load_state_dict(ckpt["sched"])
    assert torch.equal(opt2.task_weights, opt.task_weights) and torch.equal(opt2.min_losses, opt.min_losses)

    state_after = torch.get_rng_state()
    train(model, opt, sched, data[4:])
    torch.set_rng_state(state_after)
    train(model2, opt2, sched2, data[4:])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert torch.equal(opt.famo.w, opt2.famo.w) and torch.equal(opt.famo.exp_avg, opt2.famo.exp_avg)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)

    opt.save_state(tmp_path / "balanced.pt")  # the original code's save_state/load_state
    opt3 = Balanced(NoisyModel().parameters(), task_weight_update=mode)
    opt3.load_state(tmp_path / "balanced.pt")
    assert torch.equal(opt3.famo.exp_avg_sq, opt.famo.exp_avg_sq)


def test_seed_call_form():
    """The original code's four steps: backward_with_task_balancing, step(task_losses=...), update_task_weights."""
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = Balanced(model.parameters(), n_tasks=2, lr=1e-2, gamma=0.003, w_lr=0.025)
    opt.set_min_losses(torch.tensor([-1.0, -1.0]))
    x = torch.randn(8, 4)
    losses_fn = lambda: torch.stack([((model(x) - x) ** 2).mean(), model(x).abs().mean()])  # noqa: E731
    for _ in range(3):
        task_losses = losses_fn()
        opt.zero_grad()
        weighted = opt.backward_with_task_balancing(task_losses, model.parameters())
        opt.step(task_losses=task_losses)
        with torch.no_grad():
            opt.update_task_weights(losses_fn())
    assert weighted.ndim == 0 and opt.famo.step_count == 3
    assert opt.task_weights.shape == (2,) and opt.task_weights.sum().item() == pytest.approx(1.0)


def test_balanced_steps_like_cautious_adam():
    torch.manual_seed(0)
    a = [torch.randn(5, 3, requires_grad=True)]
    b = [a[0].detach().clone().requires_grad_()]
    bal, ca = Balanced(a, lr=1e-2, weight_decay=0.1), CautiousAdam(b, lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 3)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        bal.step()
        ca.step()
    assert torch.equal(a[0], b[0])


def test_bad_input_is_named(tmp_path):
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="task_weight_update"):
        Balanced(p, task_weight_update="twice")
    with pytest.raises(TypeError):
        Balanced(p, 1e-3)  # everything after params is a keyword: n_tasks and lr cannot be confused
    with pytest.raises(ValueError, match="task_balancing"):
        Balanced(p).load_state_dict(CautiousAdam(p).state_dict())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Balanced(p).load_state(tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="get_weighted_loss"):
        Balanced(p).update_task_weights(torch.ones(2))


@pytest.mark.parametrize("mode", ["second_forward", "next_step"])
def test_warmup_steps_take_the_plain_sum_then_famo_weights(mode):
    """During warm-up each step is exactly CautiousAdam's on D + R and the task weights stay uniform; the
    first step after it is FAMO-weighted and the weights start to move."""
    torch.manual_seed(0)
    target = torch.randn(2, 8)
    a = [torch.zeros(8, requires_grad=True)]
    b = [torch.zeros(8, requires_grad=True)]
    bal = Balanced(a, lr=1e-2, task_weight_update=mode, warmup_steps=3, min_losses=[-1.0, -1.0])
    ref = CautiousAdam(b, lr=1e-2)

    def losses(p):
        return torch.stack([((p[0] - target[0]) ** 2).sum() * 50, ((p[0] - target[1]) ** 2).sum()])

    for step in range(5):
        bal.zero_grad()
        task = losses(a)
        bal.backward_with_task_balancing(task)
        bal.step(task_losses=task.detach())
        bal.update_task_weights(losses(a).detach())
        if step < 3:
            assert not bal.weighted
            assert torch.equal(bal.gradient_weights(task.detach()), torch.ones(2))
            ref.zero_grad()
            losses(b).sum().backward()
            ref.step()
            assert torch.equal(a[0], b[0])
            assert torch.equal(bal.task_weights, torch.full((2,), 0.5))
        else:
            assert bal.weighted
            w = bal.gradient_weights(task.detach())
            assert w.sum().item() == pytest.approx(1.0) and w[1] > w[0]  # the small loss gets the large weight
    assert not torch.equal(bal.task_weights, torch.full((2,), 0.5))
    assert not torch.equal(a[0], b[0])


def test_warmup_resumes_exactly(tmp_path):
    p = [torch.zeros(3, requires_grad=True)]
    opt = Balanced(p, lr=1e-2, warmup_steps=2)
    for _ in range(1):
        opt.zero_grad()
        task = torch.stack([(p[0] - 1).pow(2).sum(), (p[0] + 1).pow(2).sum()])
        opt.backward_with_task_balancing(task)
        opt.step(task_losses=task.detach())
    state = opt.state_dict()
    again = Balanced([p[0].detach().clone().requires_grad_()], lr=1e-2, warmup_steps=2)
    again.load_state_dict(state)
    assert again.state_dict()["task_balancing"]["steps_done"] == 1
    # the warm-up a run started with stays its own, whatever the resuming process would compute now
    other = Balanced([p[0].detach().clone().requires_grad_()], lr=1e-2, warmup_steps=0)
    other.load_state_dict(state)
    assert other.warmup_steps == 2 and not other.weighted
    with pytest.raises(ValueError, match="warmup_steps"):
        Balanced(p, warmup_steps=-1)
