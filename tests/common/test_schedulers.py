import math

import pytest
import torch

from common import schedulers


def test_cosine_with_warmup_values():
    f = lambda s: schedulers.cosine_with_warmup(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # stays at the floor past the end


def test_cosine_without_warmup_starts_at_one():
    assert schedulers.cosine_with_warmup(0, 0, 100) == pytest.approx(1.0)
    assert schedulers.cosine_with_warmup(100, 0, 100) == pytest.approx(0.0, abs=1e-12)


def test_noam_values():
    d, w = 512, 4000
    assert schedulers.noam(0, d, w) == schedulers.noam(1, d, w)  # s = max(step, 1)
    assert schedulers.noam(100, d, w) == pytest.approx(512**-0.5 * 100 * 4000**-1.5)
    assert schedulers.noam(4000, d, w) == pytest.approx(512**-0.5 * 4000**-0.5)  # the peak
    assert schedulers.noam(16000, d, w) == pytest.approx(512**-0.5 * 16000**-0.5)
    assert schedulers.noam(4000, d, w) > schedulers.noam(3999, d, w) > 0
    assert schedulers.noam(4000, d, w) > schedulers.noam(4001, d, w)


def test_hpcm_schedule_in_steps():
    milestones, gammas = schedulers.hpcm_milestones(1000)
    assert milestones == [920, 950, 980] and gammas == [0.3, 0.33, 0.1]
    f = lambda s: schedulers.multistep(s, milestones, gammas)  # noqa: E731
    assert f(919) == 1.0
    assert f(920) == pytest.approx(0.3)
    assert f(950) == pytest.approx(0.3 * 0.33)
    assert f(999) == pytest.approx(0.3 * 0.33 * 0.1)


def test_build_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = schedulers.build_scheduler(opt, "noam", total_steps=100, d_model=64, warmup_steps=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(schedulers.noam(0, 64, 10))
    assert lrs[15] == pytest.approx(64**-0.5 * 15**-0.5)
    assert max(lrs) == pytest.approx(64**-0.5 * 10**-0.5)


def test_unknown_scheduler_is_named():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown scheduler 'cosin'"):
        schedulers.build_scheduler(opt, "cosin", total_steps=10)


def test_cosine_is_monotone_after_warmup():
    vals = [schedulers.cosine_with_warmup(s, 5, 50) for s in range(5, 51)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert not math.isnan(sum(vals))
