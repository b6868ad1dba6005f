"""The shared loop: exact resume, non-finite handling, evaluation and checkpoints."""

import math

import pytest
import torch
from torch import nn

from common.batches import EpochBatches
from common.checkpoint import CheckpointManager, load_checkpoint
from common.loop import Loop, LoopConfig, NonFiniteLossError, StepHooks
from common.runtime import seed_everything
from common.schedulers import build_scheduler


class NoisyRegression(torch.utils.data.Dataset):
    """x fixed, y = w.x + noise drawn in __getitem__ (so the sample seed matters)."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.w = torch.randn(8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.x[i] @ self.w + 0.1 * torch.randn(())


class RegressionHooks(StepHooks):
    def __init__(self, model, optimizer, poison_steps=()):
        super().__init__(model, optimizer)
        self.losses, self.poison_steps, self.calls = [], set(poison_steps), 0

    def compute_loss(self, batch):
        self.calls += 1
        x, y = batch
        loss = ((self.model(x).squeeze(-1) - y) ** 2).mean()
        if self.calls in self.poison_steps:
            loss = loss * float("nan")
        self.losses.append(loss.item())
        return {"loss": loss, "mse": loss.detach()}

    def evaluate(self):
        x = torch.randn(16, 8)
        return {"val/loss": float(((self.model(x).squeeze(-1)) ** 2).mean())}


def _make(tmp_path, max_steps, poison_steps=(), ckpt_every=0):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))  # dropout: RNG matters
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = build_scheduler(opt, "cosine", total_steps=12, warmup_steps=2)
    hooks = RegressionHooks(model, opt, poison_steps)
    batches = EpochBatches(NoisyRegression(), batch_size=16, seed=3)  # 4 batches per epoch: crosses epochs
    cfg = LoopConfig(
        max_steps=max_steps, log_every=1, eval_every=4, ckpt_every=ckpt_every, progress=False, max_nonfinite_in_row=3
    )
    loop = Loop(cfg, hooks, batches, sched, checkpoints=CheckpointManager(tmp_path / "ckpt"), kind="test")
    return loop, hooks


def test_resume_equals_uninterrupted(tmp_path):
    full, full_hooks = _make(tmp_path / "a", max_steps=12)
    full.run()

    first, first_hooks = _make(tmp_path / "b", max_steps=5)
    first.run()  # the last step saves a checkpoint (end of run)
    second, second_hooks = _make(tmp_path / "c", max_steps=12)
    second.resume(load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt", kind="test"))
    assert second.state.global_step == 5
    second.run()

    resumed = first_hooks.losses + second_hooks.losses
    assert len(resumed) == len(full_hooks.losses) == 12
    assert max(abs(a - b) for a, b in zip(resumed, full_hooks.losses)) < 1e-6
    for a, b in zip(full.model.parameters(), second.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_nonfinite_loss_is_skipped_and_counted(tmp_path):
    loop, hooks = _make(tmp_path, max_steps=8, poison_steps=(2, 5))
    before = None
    summary = loop.run()
    assert summary["skipped_steps"] == 2
    assert loop.state.global_step == 8
    logged = [p["train/skipped_steps"] for p in loop.state.history if "train/skipped_steps" in p]
    assert logged[-1] == 2 and logged[0] == 0
    assert all(math.isfinite(p.item()) for p in loop.model.parameters() for p in p.flatten()), before


def test_nonfinite_in_a_row_aborts_with_a_clear_message(tmp_path):
    loop, _ = _make(tmp_path, max_steps=10, poison_steps=(3, 4, 5))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        loop.run()


def test_nonfinite_gradient_is_skipped(tmp_path):
    loop, hooks = _make(tmp_path, max_steps=3)
    original = hooks.backward

    def poisoned_backward(out):
        original(out)
        if hooks.calls == 2:
            next(loop.model.parameters()).grad.fill_(float("inf"))

    hooks.backward = poisoned_backward
    weights_before_step2 = {}

    summary = loop.run()
    assert summary["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in loop.model.parameters()), weights_before_step2


def test_eval_picks_best_and_checkpoints(tmp_path):
    loop, _ = _make(tmp_path, max_steps=8)
    summary = loop.run()
    assert math.isfinite(summary["best_val_loss"])
    assert (tmp_path / "ckpt" / "best.pt").is_file() and (tmp_path / "ckpt" / "last.pt").is_file()
    assert any("val/loss" in p for p in loop.state.history)


def test_batches_are_sharded_across_ranks():
    ds = NoisyRegression(n=64)
    seen = []
    for rank in range(2):
        b = EpochBatches(ds, batch_size=8, seed=1, rank=rank, world_size=2)
        assert b.batches_per_epoch == 4
        seen.append({tuple(x.tolist()) for _ in range(4) for x in next(b)[0]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 64


def test_batches_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than batch_size=128"):
        EpochBatches(NoisyRegression(n=64), batch_size=128)


def test_a_scalar_of_some_steps_is_averaged_over_those_steps(tmp_path):
    """Diagnostics computed every 3rd step, logged every 6: the point holds their mean, not sum / 6."""

    class SparseHooks(RegressionHooks):
        def compute_loss(self, batch):
            out = super().compute_loss(batch)
            if self.calls % 3 == 0:
                out["diag/value"] = float(self.calls)
            return out

    seed_everything(0)
    model = nn.Linear(8, 1)
    hooks = SparseHooks(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    points = []
    loop = Loop(
        LoopConfig(max_steps=12, log_every=6, progress=False),
        hooks,
        EpochBatches(NoisyRegression(), batch_size=16, seed=3),
        on_log=lambda step, p: points.append(p),
    )
    loop.run()
    points = [p for p in points if "train/loss" in p]  # the end's evaluation is logged too
    assert [p["train/diag/value"] for p in points] == [(3 + 6) / 2, (9 + 12) / 2]
    assert points[0]["train/loss"] == pytest.approx(sum(hooks.losses[:6]) / 6)


@pytest.mark.parametrize("key, value", [("max_steps", 0), ("max_steps", -5), ("log_every", 0), ("eval_every", -1),
                                        ("ckpt_every", -1), ("max_nonfinite_in_row", 0),
                                        ("clip_grad_norm", float("nan"))])  # fmt: skip
def test_non_positive_sizes_and_intervals_are_refused_naming_the_key(key, value):
    from common.loop import loop_config

    with pytest.raises(ValueError, match=f"loop.{key}={value}: it must be >= "):
        loop_config({key: value})


def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path, capsys):
    first, _ = _make(tmp_path / "a", max_steps=4)
    done = first.run()
    again, hooks = _make(tmp_path / "b", max_steps=4)
    summary = again.fit(load_checkpoint(tmp_path / "a" / "ckpt" / "last.pt", kind="test"))
    assert hooks.losses == [] and again.state.global_step == 4
    assert "the resumed run is finished (step 4 of loop.max_steps=4)" in capsys.readouterr().err
    # its final validation numbers are still in the summary (a sweep's objective), those of its last evaluation
    finals = {k: v for k, v in done.items() if k.startswith("final/val/")}
    assert finals and {k: summary[k] for k in finals} == finals


def test_a_resumed_run_writes_its_config_only_into_a_folder_without_one(tmp_path):
    import yaml

    (tmp_path / "a").mkdir()
    first, _ = _make(tmp_path / "a", max_steps=4)
    first.config = {"lr": 0.01}
    first.fit(run_dir=tmp_path / "a")
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text()) == {"lr": 0.01}
    checkpoint = load_checkpoint(tmp_path / "a" / "ckpt" / "last.pt", kind="test")
    for folder in ("a", "b"):  # the run's own folder (keeps its config), a new folder (gets the resumed one's)
        (tmp_path / folder).mkdir(exist_ok=True)
        again, _ = _make(tmp_path / folder, max_steps=6)
        again.config = {"lr": 0.02}
        again.fit(checkpoint, run_dir=tmp_path / folder)
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text()) == {"lr": 0.01}
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == {"lr": 0.02}


def test_a_monitor_the_evaluation_does_not_report_stops_the_run_at_its_first_evaluation(tmp_path):
    loop, _ = _make(tmp_path, max_steps=8)
    loop.cfg.monitor = "val/lss"
    with pytest.raises(ValueError, match=r"loop.monitor=val/lss is not a metric the evaluation reports \(val/loss"):
        loop.run()
    assert loop.state.global_step == 4 and (tmp_path / "ckpt" / "last.pt").is_file()  # the steps so far are kept
