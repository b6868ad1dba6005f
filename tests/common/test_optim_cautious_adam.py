"""CautiousAdam against its formula written out here, against AdamW, and its fused path against the loop."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.optim import CautiousAdam

SHAPES = [(7,), (5, 3), (1,), (4, 2, 3)]


def formula_step(p, g, m, v, t, lr, wd, b1, b2, eps, scale_max, scaling):
    """One Cautious Adam step as the issue states it, for one tensor (returns new p, m, v)."""
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = torch.sqrt(v) / math.sqrt(1 - b2**t) + eps
    mask = torch.where(m * g > 0, 1.0, 0.0).to(p.dtype)
    if scaling == "balanced_rd":
        scale = min(1.0 / max(mask.mean().item(), 1e-3), scale_max)
    else:
        scale = mask.numel() / (mask.sum().item() + 1.0)
    p = p - lr / (1 - b1**t) * (m * (mask * scale)) / denom
    return p, m, v


@pytest.mark.parametrize("scaling,scale_max", [("balanced_rd", 10.0), ("balanced_rd", 1.5), ("paper", 10.0)])
def test_matches_formula_50_steps_with_weight_decay_and_scheduler(scaling, scale_max):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    b1, b2, eps = 0.9, 0.99, 1e-8
    groups = [
        {"params": params[:2], "lr": 3e-2, "weight_decay": 0.1},
        {"params": params[2:], "lr": 1e-2, "weight_decay": 0.0},
    ]
    opt = CautiousAdam(groups, betas=(b1, b2), eps=eps, mask_scale_max=scale_max, mask_scaling=scaling, impl="torch")
    decay = lambda k: 0.5 * (1 + math.cos(math.pi * k / 50))  # noqa: E731 (cosine LR, written here)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)

    ref = [[p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p), 0] for p in params]
    base_lr = [3e-2, 3e-2, 1e-2, 1e-2]
    wds = [0.1, 0.1, 0.0, 0.0]
    for k in range(50):
        grads = [
            torch.randn(s, generator=gen, dtype=torch.float64)
            * (torch.rand(s, generator=gen, dtype=torch.float64) > 0.2)
            for s in SHAPES
        ]  # some exact 0
        skip = 3 if k % 7 == 3 else None  # a parameter without gradient keeps its own step count
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if i == skip else g.clone()
        opt.step()
        sched.step()
        for i, g in enumerate(grads):
            if i == skip:
                continue
            r = ref[i]
            r[3] += 1
            r[0], r[1], r[2] = formula_step(
                r[0], g, r[1], r[2], r[3], base_lr[i] * decay(k), wds[i], b1, b2, eps, scale_max, scaling
            )
    diff = max((p.detach() - r[0]).abs().max().item() for p, r in zip(params, ref))
    assert diff < 1e-7
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-2 * decay(50))


def _run_pair(ours, theirs, grads_fn, steps=50):
    for _ in range(steps):
        grads = grads_fn()
        for opt in (ours, theirs):
            for p, g in zip(opt.param_groups[0]["params"], grads):
                p.grad = g.clone()
            opt.step()


def test_cautious_off_equals_adamw():
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(s, generator=gen, requires_grad=True) for s in SHAPES]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours = CautiousAdam(a, lr=1e-2, weight_decay=0.05, cautious=False, impl="torch")
    theirs = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.05, foreach=False)
    _run_pair(ours, theirs, lambda: [torch.randn(s, generator=gen) for s in SHAPES])
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) < 1e-6


def test_all_agreeing_gradients_give_adamw():
    """Gradients that keep each element's sign make the mask all ones (scale 1): the step is AdamW's."""
    gen = torch.Generator().manual_seed(2)
    signs = [torch.randn(s, generator=gen).sign() for s in SHAPES]
    a = [torch.randn(s, generator=gen, requires_grad=True) for s in SHAPES]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours = CautiousAdam(a, lr=1e-2, weight_decay=0.05, impl="torch")
    theirs = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.05, foreach=True)
    _run_pair(ours, theirs, lambda: [s * (0.1 + torch.rand(s.shape, generator=gen)) for s in signs])
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) < 1e-6


FUSED_VS_LOOP = """
import json, torch
from common.optim import CautiousAdam
out = {}
for scaling, cautious in [("balanced_rd", True), ("paper", True), ("balanced_rd", False)]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(3,), (1025,), (7, 9), (2048,), (1,)]  # odd sizes; one tensor spans three programs
    a = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_() for p in a]
    kw = dict(lr=1e-2, weight_decay=0.1, mask_scaling=scaling, cautious=cautious)
    loop, fused = CautiousAdam(a, impl="torch", **kw), CautiousAdam(b, impl="triton", **kw)
    for k in range(10):
        # about a fifth of the entries exactly zero: there m * g == 0, which the mask must reject
        grads = [torch.randn(s, generator=gen) * (torch.rand(s, generator=gen) > 0.2) for s in shapes]
        if k in (3, 4):
            grads[2] = None  # no gradient: that tensor's step count falls behind, a launch of its own
        for opt, ps in ((loop, a), (fused, b)):
            for p, g in zip(ps, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
    out[f"{scaling}-{cautious}"] = {
        "param": max((x - y).abs().max().item() for x, y in zip(a, b)),  # params are O(1)
        "exp_avg": max((loop.state[x]["exp_avg"] - fused.state[y]["exp_avg"]).abs().max().item()
                       for x, y in zip(a, b)),
        "steps": [fused.state[y]["step"] for y in b],
        "cached_tables": len(fused._fused_cache),
    }
print(json.dumps(out))
"""


def test_fused_kernels_match_loop_in_interpreter():
    """The Triton kernels, run by Triton's CPU interpreter. A fresh process: TRITON_INTERPRET only takes
    effect when set before Triton is first imported."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    run = subprocess.run(
        [sys.executable, "-c", FUSED_VS_LOOP], env=env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(result) == {"balanced_rd-True", "paper-True", "balanced_rd-False"}
    for case, diff in result.items():
        assert diff["param"] < 2e-6, case
        assert diff["exp_avg"] < 1e-6, case
        assert diff["steps"] == [10, 10, 8, 10, 10], case
        assert diff["cached_tables"] <= 4, case  # one check + per-step-count tables, not one per step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the compiled Triton path")
def test_fused_matches_loop_on_cuda_and_is_deterministic():
    shapes = [(3,), (4097,), (64, 33), (1,)]

    def run(impl):
        gen = torch.Generator().manual_seed(4)
        ps = [torch.randn(s, generator=gen).cuda().requires_grad_() for s in shapes]
        opt = CautiousAdam(ps, lr=1e-2, weight_decay=0.1, impl=impl)
        for _ in range(20):
            for p, s in zip(ps, shapes):
                p.grad = (torch.randn(s, generator=gen) * (torch.rand(s, generator=gen) > 0.2)).cuda()
            opt.step()
        return ps

    loop, fused, again = run("torch"), run("auto"), run("auto")
    for x, y, z in zip(loop, fused, again):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
        assert torch.equal(y, z)


def test_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(5)
    a = [torch.randn(s, generator=gen, requires_grad=True) for s in SHAPES]
    opt = CautiousAdam(a, lr=1e-2, weight_decay=0.01)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(10)]

    def run(o, ps, gs):
        for step_grads in gs:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            o.step()

    run(opt, a, grads[:5])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt2 = CautiousAdam(b, lr=1.0)  # the loaded param_groups restore lr
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    run(opt, a, grads[5:])
    run(opt2, b, grads[5:])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_tensor_learning_rate_steps_like_a_float():
    a = [torch.ones(3, requires_grad=True)]
    b = [torch.ones(3, requires_grad=True)]
    fa, fb = CautiousAdam(a, lr=0.1), CautiousAdam(b, lr=torch.tensor(0.1))
    for opt, ps in ((fa, a), (fb, b)):
        ps[0].grad = torch.tensor([1.0, -2.0, 3.0])
        opt.step()
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], torch.ones(3))


def test_sparse_and_complex_gradients_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        CautiousAdam(emb.parameters()).step()
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        CautiousAdam([z]).step()


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=-1.0),
        dict(betas=(1.0, 0.9)),
        dict(mask_scaling="nope"),
        dict(impl="cuda"),
        dict(mask_scale_max=0.5),
        dict(weight_decay=-1),
    ],
)
def test_bad_arguments_name_the_value(kw):
    with pytest.raises(ValueError, match=str(next(iter(kw)))):
        CautiousAdam([torch.zeros(2, requires_grad=True)], **kw)


@pytest.mark.parametrize("old,new", [("loop", "torch"), ("fused", "triton")])
def test_old_impl_names_are_refused_with_the_new_ones(old, new):
    with pytest.raises(ValueError, match=f"'{old}' is now '{new}'"):
        CautiousAdam([torch.zeros(2, requires_grad=True)], impl=old)


@pytest.mark.parametrize("value,interprets", [("1", True), ("true", True), ("on", True), ("0", False), ("", False)])
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, interprets):
    pytest.importorskip("triton")
    from common.optim import cautious_adam

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert cautious_adam._interpreting() is interprets
