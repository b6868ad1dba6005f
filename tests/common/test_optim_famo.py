"""FAMO against the paper's equations written out here (numpy, float64) and against its reference form
(autograd through softmax + torch.optim.Adam), plus its properties."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from common.optim import FAMO


def numpy_famo(losses_seq, n, gamma, w_lr, min_losses, b1=0.9, b2=0.999, eps=1e-8):
    """Task weights after FAMO updates prev=losses_seq[k] -> curr=losses_seq[k+1], from the equations."""
    w, m, v = np.zeros(n), np.zeros(n), np.zeros(n)
    for t in range(1, len(losses_seq)):
        prev, curr = losses_seq[t - 1], losses_seq[t]
        delta = np.log(prev - min_losses + 1e-8) - np.log(curr - min_losses + 1e-8)
        z = np.exp(w - w.max()) / np.exp(w - w.max()).sum()
        jac = np.diag(z) - np.outer(z, z)  # d softmax / d w
        g = jac.T @ delta + gamma * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - w_lr * m_hat / (np.sqrt(v_hat) + eps)
    z = np.exp(w - w.max())
    return z / z.sum()


def random_losses(steps, n, seed):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.001, 0.02, n)
    t = np.arange(steps)[:, None]
    return (1.0 + rng.uniform(0, 2, n)) * np.exp(-rates * t) * rng.uniform(0.9, 1.1, (steps, n))


def test_weights_after_200_updates_match_the_equations():
    n, gamma, w_lr = 3, 0.01, 0.025
    seq = random_losses(201, n, seed=0)
    mins = np.array([-1.0, -0.5, 0.0])
    famo = FAMO(n, gamma=gamma, w_lr=w_lr, dtype=torch.float64)
    famo.set_min_losses(torch.tensor(mins))
    for k in range(200):
        famo.get_weighted_loss(torch.tensor(seq[k]))
        famo.update(torch.tensor(seq[k + 1]))
    expected = numpy_famo(seq, n, gamma, w_lr, mins)
    np.testing.assert_allclose(famo.weights.numpy(), expected, rtol=0, atol=1e-12)
    assert np.abs(expected - 1 / n).max() > 1e-3  # the weights did move


def test_matches_the_autograd_and_torch_adam_form():
    n, gamma, w_lr = 2, 0.003, 0.025
    seq = random_losses(101, n, seed=1)
    famo = FAMO(n, gamma=gamma, w_lr=w_lr, dtype=torch.float64)
    w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
    for k in range(100):
        prev, curr = torch.tensor(seq[k]), torch.tensor(seq[k + 1])
        famo.get_weighted_loss(prev)
        famo.update(curr)
        delta = (prev + 1e-8).log() - (curr + 1e-8).log()
        (d,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        adam.zero_grad()
        w.grad = d
        adam.step()
    torch.testing.assert_close(famo.w, w.detach(), rtol=0, atol=1e-12)


def test_slowly_improving_task_gains_weight():
    famo = FAMO(2, gamma=0.01, w_lr=0.025)
    t = torch.arange(201, dtype=torch.float32)
    losses = torch.stack([torch.exp(-0.02 * t), torch.exp(-0.002 * t)], 1)  # task 1 improves 10x slower
    for k in range(200):
        famo.get_weighted_loss(losses[k])
        famo.update(losses[k + 1])
    z = famo.weights
    assert z[1] > 0.6 and z[1] > z[0]


def test_weighted_loss_gradient_is_the_convex_combination():
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    famo = FAMO(2)
    famo.set_min_losses([-1.0, -1.0])
    famo.w = torch.tensor([0.3, -0.2])
    losses = torch.stack([(theta**2).sum() * 100, (theta - 1).abs().sum()])
    (g_weighted,) = torch.autograd.grad(famo.get_weighted_loss(losses), theta, retain_graph=True)
    g = [torch.autograd.grad(losses[i], theta, retain_graph=True)[0] for i in range(2)]
    z, d = torch.softmax(famo.w, -1), losses.detach() + 1 + 1e-8
    w = (z / d) / (z / d).sum()
    torch.testing.assert_close(g_weighted, w[0] * g[0] + w[1] * g[1])
    assert w.sum().item() == pytest.approx(1.0)


def test_backward_clips_after_backward():
    torch.manual_seed(0)
    theta = torch.randn(10, requires_grad=True)
    famo = FAMO(2, max_norm=0.01)
    loss = famo.backward(torch.stack([(theta**2).sum(), (theta**4).sum()]), [theta])
    assert theta.grad.norm().item() == pytest.approx(0.01, rel=1e-4)
    assert loss.requires_grad


def test_state_dict_round_trip_continues_identically():
    seq = torch.tensor(random_losses(101, 2, seed=2), dtype=torch.float32)
    a = FAMO(2, gamma=0.003)
    a.set_min_losses([-1.0, -1.0])
    for k in range(50):
        a.get_weighted_loss(seq[k])
        a.update(seq[k + 1])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = FAMO(2, gamma=0.5, w_lr=1.0)  # the loaded state restores gamma and w_lr
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(b.weights, a.weights) and torch.equal(b.prev_losses, a.prev_losses)
    b.update(seq[50])  # prev_losses came with the checkpoint
    a.update(seq[50])
    for k in range(51, 100):
        for f in (a, b):
            f.get_weighted_loss(seq[k])
            f.update(seq[k + 1])
    assert torch.equal(a.w, b.w) and torch.equal(a.exp_avg_sq, b.exp_avg_sq)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="n_tasks"):
        FAMO(1)
    famo = FAMO(2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        famo.get_weighted_loss(torch.ones(3))
    with pytest.raises(RuntimeError, match="get_weighted_loss"):
        famo.update(torch.ones(2))
    with pytest.raises(ValueError, match="n_tasks=3"):
        famo.load_state_dict(FAMO(3).state_dict())
