"""common.run.execute with a toy phase: the resume checkpoint is read once and reaches build, the loop and the
run's after_fit; the schedule comes from the `schedule` block."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from common import run
from common.checkpoint import CheckpointError, load_checkpoint
from common.loop import StepHooks


class Line(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        x = torch.full((4,), float(i) / 32)
        return x, x.sum() + 0.1 * torch.randn(())  # the noise makes the sample seed matter


class LineHooks(StepHooks):
    def compute_loss(self, batch):
        x, y = batch
        return {"loss": ((self.model(x).squeeze(-1) - y) ** 2).mean()}


def toy_config(tmp_path, name: str, **loop):
    return OmegaConf.create(
        {
            "task_name": "toy",
            "seed": 0,
            "device": "cpu",
            "resume": None,
            "logger": {"backend": "none"},
            "paths": {"output_root": str(tmp_path / "outputs")},
            "checkpoint": {"dir": str(tmp_path / name), "keep_last": 5},
            "optim": {"lr": 0.1},
            "schedule": {"name": "cosine", "warmup_steps": 2, "min_lr": 0.001},
            "loop": {"max_steps": 6, "log_every": 1, "progress": False, **loop},
        }
    )


class ToyPhase:
    """A build function that remembers what it was handed, and an after_fit that remembers the loop."""

    def __init__(self, d_model=None):
        self.d_model, self.resumed, self.finished = d_model, [], []

    def build(self, cfg, device, resumed) -> run.RunParts:
        self.resumed.append(resumed)
        model = nn.Linear(4, 1).to(device)
        return run.RunParts(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=cfg.optim.lr),
            hooks=partial(LineHooks),
            train_set=Line(),
            batch_size=8,
            d_model=self.d_model,
            after_fit=lambda loop, folder: self.finished.append((loop.state.global_step, loop.epoch, folder)),
        )


def losses(path) -> list[float]:
    return [p["train/loss"] for p in load_checkpoint(path)["history"] if "train/loss" in p]


def test_resume_reads_the_checkpoint_once_and_continues_the_curve(tmp_path, monkeypatch):
    full = ToyPhase()
    run.execute(toy_config(tmp_path, "full", ckpt_every=3), "toy", full.build)
    assert full.resumed == [None] and full.finished[0][:2] == (6, 1)  # 4 batches an epoch: epoch 1 at step 6

    reads = []
    real_load = run.load_checkpoint

    def counted_load(*args, **kwargs):
        reads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(run, "load_checkpoint", counted_load)
    again = ToyPhase()
    cfg = toy_config(tmp_path, "again", ckpt_every=3)
    cfg.resume = str(tmp_path / "full" / "step_00000003.pt")
    summary = run.execute(cfg, "toy", again.build)
    assert len(reads) == 1 and again.resumed[0]["global_step"] == 3  # the loop restored from that same dict
    assert summary["global_step"] == 6
    assert losses(tmp_path / "again" / "last.pt") == pytest.approx(losses(tmp_path / "full" / "last.pt"), abs=1e-6)


def test_a_checkpoint_of_another_kind_is_refused_before_building(tmp_path):
    run.execute(toy_config(tmp_path, "toy", max_steps=1), "toy", ToyPhase().build)
    cfg = toy_config(tmp_path, "other")
    cfg.resume = str(tmp_path / "toy" / "last.pt")
    phase = ToyPhase()
    with pytest.raises(CheckpointError, match="toy checkpoint, but a phase1 checkpoint is needed"):
        run.execute(cfg, "phase1", phase.build)
    assert phase.resumed == []


def test_schedule_block_drives_the_learning_rate(tmp_path):
    seen = []
    run.execute(
        toy_config(tmp_path, "lr"), "toy", ToyPhase().build, on_log=lambda step, p: seen.append(p.get("train/lr"))
    )
    lrs = [lr for lr in seen if lr is not None]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.001)  # warm-up done, then cosine to min_lr


def test_noam_needs_a_model_width(tmp_path):
    cfg = toy_config(tmp_path, "noam")
    cfg.schedule.name = "noam"
    with pytest.raises(ValueError, match="d_model"):
        run.execute(cfg, "toy", ToyPhase().build)
    cfg = toy_config(tmp_path, "noam-ok", max_steps=1)
    cfg.schedule.name = "noam"
    run.execute(cfg, "toy", ToyPhase(d_model=16).build)


def test_objective_changes_name_each_changed_leaf_and_skip_the_ignored_ones():
    from common.config import UserError

    objective = run.Objective(keys=("model", "lmbda"), ignore=("model.overrides.ops_impl",))
    old = {"model": {"preset": "small", "overrides": {"ops_impl": "triton"}}, "lmbda": 0.01, "seed": 1}
    same_but_how = {"model": {"preset": "small", "overrides": {"ops_impl": "torch"}}, "lmbda": 0.01, "seed": 2}
    resumed = {"config": old, "global_step": 5}
    assert run._objective_changes(resumed, same_but_how, objective, "a.pt", allowed=False) == {}
    other = {"model": {"preset": "base", "overrides": {"eta": 0.2}}, "lmbda": 0.01}
    with pytest.raises(UserError, match=r"a\.pt was trained with model\.overrides\.eta=None, .* \(and 1 more\)"):
        run._objective_changes(resumed, other, objective, "a.pt", allowed=False)
    changes = run._objective_changes(resumed, other, objective, "a.pt", allowed=True)
    assert changes == {"model.overrides.eta": (None, 0.2), "model.preset": ("small", "base")}
    assert run._objective_changes(None, other, objective, "a.pt", allowed=False) == {}  # a fresh run


@pytest.fixture
def no_automatic_gc():
    """Only reference counting frees, as between two runs when the collector's thresholds are not reached."""
    import gc

    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_nothing_of_a_run_outlives_train(phase, tmp_path, monkeypatch, no_automatic_gc):
    import importlib
    import weakref

    from common.config import compose

    built = []
    original = torch.optim.Optimizer.__init__

    def record(self, *args, **kwargs):  # every optimizer the runs make, and through its params their models
        original(self, *args, **kwargs)
        built.append((weakref.ref(self), [weakref.ref(p) for g in self.param_groups for p in g["params"]]))

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", record)
    tiny = {
        "phase1": ["model=tiny", "data.patch_size=64", "data.batch_size=2", "data.repeats=1", "eval.max_images=1"],
        "phase2": ["model=debug", "seq_len=32", "batch_size=2", "eval.max_batches=1"],
    }[phase]
    train = importlib.import_module(f"{phase}.train").train
    for run_number in range(2):
        cfg = compose(phase, [*tiny, "loop.max_steps=2", "loop.eval_every=2", "loop.progress=false", "logger=none",
                              "device=cpu", f"paths.output_root={tmp_path}"])  # fmt: skip
        train(cfg)
        alive = [ref for ref, params in built if ref() is not None or any(p() is not None for p in params)]
        assert not alive, f"run {run_number}: {len(alive)} optimizer(s) or their parameters outlived train()"


def test_closing_lines_give_the_numbers_by_split_and_where_the_run_is():
    from common.run_summary import closing_lines

    summary = {"final/val/loss": 1.23456, "final/val/psnr": 29.87, "final/test/loss": 1.3, "final/test/images": 3.0,
               "global_step": 2000.0, "skipped_steps": 1.0, "best_val_loss": 1.23456, "interrupted": 0.0,
               "run_dir": "outputs/phase1/x", "checkpoint_dir": "outputs/phase1/x/checkpoints",
               "mlflow_run_id": "abc", "mlflow_experiment_id": "7", "tracking_uri": "http://tracker:5000"}  # fmt: skip
    lines = closing_lines(summary)
    assert lines[0] == "finished at step 2000 (1 skipped)"
    assert lines[1] == "  val    loss 1.235   psnr 29.87" and lines[2] == "  test   loss 1.3   images 3"
    assert lines[3] == "  folder      outputs/phase1/x"
    assert lines[4] == "  checkpoints outputs/phase1/x/checkpoints (best.pt: 1.235 on validation)"
    # a server's run opens in the training view of its own UI
    assert (
        lines[5]
        == "  mlflow      run abc in http://tracker:5000: http://tracker:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    untracked = closing_lines({**summary, "mlflow_run_id": None, "interrupted": 1.0})
    assert untracked[0].startswith("stopped at step 2000") and not any("mlflow" in line for line in untracked)


def test_cpu_threads_sets_the_threads_a_run_computes_with(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    run.execute(toy_config(tmp_path, "default"), "toy", ToyPhase().build)
    assert asked == []  # null: torch's own default is left alone
    cfg = toy_config(tmp_path, "one")
    cfg.cpu_threads = 1
    run.execute(cfg, "toy", ToyPhase().build)
    assert asked == [1]


def test_a_run_refused_while_building_leaves_its_tracking_run_as_it_was(tmp_path, mlflow_store):
    """Resuming a finished, tracked run with a bad checkpoint setting: refused before the MLflow run is reopened,
    so the finished run stays FINISHED (and a new run leaves no RUNNING run behind)."""
    from mlflow.tracking import MlflowClient

    cfg = toy_config(tmp_path, "ckpt")
    cfg.logger = {"backend": "mlflow", "experiment": "toy"}
    run.execute(cfg, "toy", ToyPhase().build)
    resumed = cfg.copy()
    resumed.resume, resumed.checkpoint = str(tmp_path / "ckpt" / "last.pt"), {"dir": None, "keep_last": 0}
    with pytest.raises(ValueError, match="checkpoint.keep_last=0 must be >= 1"):
        run.execute(resumed, "toy", ToyPhase().build)
    statuses = [r.info.status for r in MlflowClient(mlflow_store).search_runs(["1"])]
    assert statuses == ["FINISHED"]


def test_a_zero_learning_rate_is_refused_before_anything_is_built(tmp_path):
    phase = ToyPhase()
    cfg = toy_config(tmp_path, "ckpt")
    cfg.optim.lr = 0.0
    with pytest.raises(run.configs.UserError, match=r"optim.lr=0.0 must be a number > 0"):
        run.execute(cfg, "toy", phase.build)
    assert phase.resumed == []
