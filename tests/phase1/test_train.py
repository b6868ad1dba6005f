"""Phase 1 training through train(cfg): both optimizers on the tiny HPCM, resume, evaluation JSON."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import compose
from common.runtime import device_name
from phase1.data import image_paths
from phase1.train import train

FAST = [
    "model=tiny",
    "data.patch_size=64",
    "data.batch_size=2",
    "data.repeats=1",
    "loop.log_every=1",
    "loop.progress=false",
    "eval.max_images=1",
]

TRAIN_METRICS = [
    "train/loss",
    "train/distortion",
    "train/bpp_loss",
    "train/psnr",
    "train/lr",
    "train/grad_norm",
    "train/skipped_steps",
]
EVAL_TERMS = ["loss", "distortion", "bpp_loss", "bpp_real", "psnr", "ms_ssim"]
VAL_METRICS = [f"val/{k}" for k in EVAL_TERMS]
TEST_METRICS = [f"test/{k}" for k in EVAL_TERMS] + ["test/images"]


@pytest.mark.parametrize("optim", ["adam", "balanced"])
def test_tiny_run_logs_every_metric(optim, tmp_path, mlflow_store):
    import mlflow

    cfg = compose(
        "phase1",
        [
            *FAST,
            f"optim={optim}",
            "loop.max_steps=3",
            "loop.eval_every=3",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
            f"logger.run_name=test-{optim}",
        ],
    )
    summary = train(cfg)
    assert summary["global_step"] == 3 and summary["skipped_steps"] == 0
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=["phase1"]).iloc[0]
    expected = TRAIN_METRICS + VAL_METRICS + TEST_METRICS
    if optim == "balanced":
        expected += ["train/task_weight_distortion", "train/task_weight_bpp", "train/effective_lambda"]
        assert run["metrics.train/task_weight_distortion"] + run["metrics.train/task_weight_bpp"] == pytest.approx(1)
    missing = [m for m in expected if f"metrics.{m}" not in run or run[f"metrics.{m}"] != run[f"metrics.{m}"]]
    assert not missing, f"not logged: {missing}"
    assert run["params.optim.name"] == optim and run["status"] == "FINISHED"
    assert run["tags.git_commit"] and run["tags.command"]  # where the run came from
    assert run["tags.device"] == device_name(torch.device("cpu"))  # and what it ran on
    from mlflow.tracking import MlflowClient

    assert "config.yaml" in [a.path for a in MlflowClient(mlflow_store).list_artifacts(run["run_id"])]
    assert run["metrics.test/bpp_real"] > 0 and run["metrics.test/bpp_loss"] > 0
    assert summary["final/val/loss"] == run["metrics.val/loss"] and summary["final/test/images"] == 1
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt", kind="phase1")
    assert ckpt["mlflow_run_id"] == run["run_id"]
    if optim == "balanced":
        assert "task_balancing" in ckpt["optimizer_state_dict"]  # the FAMO state travels with the checkpoint


def test_resume_continues_the_same_curve_and_run(tmp_path, mlflow_store):
    import mlflow

    common = [
        *FAST,
        "optim=balanced",
        "loop.max_steps=4",
        "loop.eval_every=2",
        "loop.ckpt_every=2",
        "checkpoint.keep_last=5",
    ]
    full = train(compose("phase1", [*common, f"checkpoint.dir={tmp_path / 'full'}"]))
    # the evaluation at step 2 coded real bytes, so the checkpoint holds filled CDF tables to resume into
    assert load_checkpoint(tmp_path / "full" / "step_00000002.pt")["model_state_dict"]["scale_table"].numel() > 0
    # resume from the step-2 checkpoint of that run, as after a crash at step 3
    resumed = train(
        compose(
            "phase1",
            [*common, f"checkpoint.dir={tmp_path / 'again'}", f"resume={tmp_path / 'full' / 'step_00000002.pt'}"],
        )
    )
    assert resumed["global_step"] == 4
    a = load_checkpoint(tmp_path / "full" / "last.pt")["history"]
    b = load_checkpoint(tmp_path / "again" / "last.pt")["history"]
    losses_a = [p["train/loss"] for p in a if "train/loss" in p]
    losses_b = [p["train/loss"] for p in b if "train/loss" in p]
    assert len(losses_a) == len(losses_b) == 4
    assert max(abs(x - y) for x, y in zip(losses_a, losses_b)) < 1e-5
    weights_a = [p["train/task_weight_distortion"] for p in a if "train/task_weight_distortion" in p]
    weights_b = [p["train/task_weight_distortion"] for p in b if "train/task_weight_distortion" in p]
    assert weights_a == pytest.approx(weights_b, abs=1e-6)  # FAMO state restored too
    assert full["final/test/loss"] == pytest.approx(resumed["final/test/loss"], rel=1e-5)
    assert full["final/val/loss"] == pytest.approx(resumed["final/val/loss"], rel=1e-5)
    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["phase1"])
    assert len(runs) == 1  # the resumed run continued the same MLflow run


def test_evaluate_json_in_compressai_format(tmp_path):
    from phase1.evaluate import main

    train(
        compose(
            "phase1",
            [
                *FAST,
                "logger=none",
                "loop.max_steps=1",
                "loop.eval_every=100",
                "eval.real_bitstreams=false",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
            ],
        )
    )
    out = tmp_path / "rd.json"
    assert main([str(tmp_path / "ckpt" / "last.pt"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"name", "description", "results", "points"}
    for key in ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"):
        assert len(result["results"][key]) == 1
    point = result["points"][0]
    assert len(point["bpp_per_image"]) == 3 and point["bpp"] > 0  # the three held-out photos, real bytes
    assert main([str(tmp_path / "missing.pt")]) == 2


def test_validation_picks_best_and_test_is_touched_once_at_the_end(tmp_path, monkeypatch):
    """Every in-training evaluation reads the validation photos; the test photos are read once, after the
    last step; best.pt follows val/loss."""
    import phase1.train as phase1_train

    seen = []
    real = phase1_train.evaluate_images

    def spy(model, paths, *args, **kwargs):
        seen.append(sorted(p.name for p in paths))
        return real(model, paths, *args, **kwargs)

    monkeypatch.setattr(phase1_train, "evaluate_images", spy)
    cfg = compose(
        "phase1",
        [
            *FAST,
            "eval.max_images=null",
            "logger=none",
            "loop.max_steps=4",
            "loop.eval_every=2",
            "eval.real_bitstreams=false",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
        ],
    )
    summary = train(cfg)
    val = sorted(p.name for p in image_paths("builtin", None, "val"))
    test = sorted(p.name for p in image_paths("builtin", None, "test"))
    assert seen == [val, val, test]  # evaluations at steps 2 and 4, then the final test
    history = load_checkpoint(tmp_path / "ckpt" / "last.pt")["history"]
    vals = [p["val/loss"] for p in history if "val/loss" in p]
    assert summary["best_val_loss"] == min(vals)
    assert load_checkpoint(tmp_path / "ckpt" / "best.pt")["best_val_loss"] == min(vals)


def test_balanced_warmup_then_famo_and_effective_lambda(tmp_path):
    """With optim.warmup_steps=2 the first two steps keep uniform weights and the plain lambda; FAMO moves
    the weights after them, and effective_lambda = lambda * w_D / w_R of the step's gradient weights."""
    cfg = compose(
        "phase1",
        [
            *FAST,
            "optim=balanced",
            "optim.warmup_steps=2",
            "logger=none",
            "loop.max_steps=4",
            "loop.eval_every=100",
            "eval.real_bitstreams=false",
            "lmbda=0.013",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
        ],
    )
    train(cfg)
    history = [p for p in load_checkpoint(tmp_path / "ckpt" / "last.pt")["history"] if "train/loss" in p]
    assert [p["train/task_weight_distortion"] for p in history[:2]] == [0.5, 0.5]
    assert [p["train/effective_lambda"] for p in history[:2]] == pytest.approx([0.013, 0.013])
    assert history[3]["train/task_weight_distortion"] != 0.5
    # after warm-up the rate, the smaller loss + 1, gets the larger weight: lambda acts smaller
    assert 0 < history[3]["train/effective_lambda"] < 0.013


@pytest.mark.parametrize("model", ["tiny"])
def test_bf16_mixed_trains_on_the_cpu(model, tmp_path):
    """precision=bf16-mixed: convolutions in bf16, entropy model and likelihoods in float32 (HPCM.forward)."""
    runs = {}
    for precision in ("32", "bf16-mixed"):
        cfg = compose(
            "phase1",
            [
                *FAST,
                f"model={model}",
                f"precision={precision}",
                "logger=none",
                "device=cpu",
                "loop.max_steps=3",
                "loop.eval_every=100",
                "eval.real_bitstreams=false",
                f"checkpoint.dir={tmp_path / precision}",
            ],
        )
        summary = train(cfg)
        assert summary["skipped_steps"] == 0
        runs[precision] = [
            p["train/loss"] for p in load_checkpoint(tmp_path / precision / "last.pt")["history"] if "train/loss" in p
        ]
    assert runs["bf16-mixed"] == pytest.approx(runs["32"], rel=0.05)
    assert runs["bf16-mixed"] != runs["32"]  # autocast was really on


def test_init_from_starts_training_from_the_checkpoint_weights(tmp_path):
    """`init_from=` loads a project checkpoint's weights into the new run's model (fine-tuning's path)."""
    import torch

    from common.checkpoint import save_checkpoint
    from phase1.hpcm import build_hpcm
    from phase1.train import build_parts

    torch.manual_seed(1)
    source = build_hpcm("tiny")
    save_checkpoint(tmp_path / "source.pt", {"kind": "phase1", "model_state_dict": source.state_dict(), "config": {}})
    cfg = compose("phase1", [*FAST, "logger=none", "device=cpu", f"init_from={tmp_path / 'source.pt'}"])
    model = build_parts(cfg, torch.device("cpu"), None).model
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


@pytest.mark.parametrize("trained, left", [(0, 500), (300, 200), (800, 0), (None, 0)])
def test_balanced_warm_up_counts_the_steps_init_from_was_trained(trained, left, tmp_path, capsys):
    """The warm-up gets a codec out of its random start; a codec from init_from did part or all of it already
    (an official checkpoint carries no step count and is trained to the end)."""
    from common.checkpoint import save_checkpoint
    from phase1.hpcm import build_hpcm
    from phase1.train import build_parts

    state = build_hpcm("tiny").state_dict()
    if trained is None:  # the official code's form: a bare state_dict
        torch.save(state, tmp_path / "source.pt")
    else:
        save_checkpoint(tmp_path / "source.pt", {"kind": "phase1", "model_state_dict": state, "config": {},
                                                 "global_step": trained})  # fmt: skip
    common = [*FAST, "logger=none", "device=cpu", f"init_from={tmp_path / 'source.pt'}"]
    parts = build_parts(
        compose("phase1", [*common, "optim=balanced", "optim.warmup_steps=500"]), torch.device("cpu"), None
    )
    assert parts.optimizer.warmup_steps == left
    note = capsys.readouterr().err
    assert f"{left} of Balanced's optim.warmup_steps=500 are left" in note
    assert ("official weights" in note) == (trained is None)
    scratch = build_parts(compose("phase1", [*FAST, "logger=none", "optim=balanced"]), torch.device("cpu"), None)
    assert scratch.optimizer.warmup_steps == 500  # from scratch: the whole warm-up


def test_a_codecs_training_steps_add_up_over_fine_tunes(tmp_path):
    """Released weights fine-tuned again: the second fine-tune's codec counts the steps of all three runs."""
    from phase1.weights import read_checkpoint

    run = [*FAST, "logger=none", "loop.eval_every=0", "eval.real_bitstreams=false"]
    train(compose("phase1", [*run, "loop.max_steps=3", f"checkpoint.dir={tmp_path / 'a'}"]))
    train(compose("phase1", [*run, "loop.max_steps=2", f"init_from={tmp_path / 'a' / 'last.pt'}",
                             f"checkpoint.dir={tmp_path / 'b'}"]))  # fmt: skip
    train(compose("phase1", [*run, "loop.max_steps=2", f"init_from={tmp_path / 'b' / 'last.pt'}",
                             f"checkpoint.dir={tmp_path / 'c'}"]))  # fmt: skip
    assert [read_checkpoint(tmp_path / x / "last.pt")[2]["steps"] for x in "abc"] == [3, 5, 7]


def test_resume_under_another_lambda_needs_consent_and_restarts_best(tmp_path, mlflow_store):
    import mlflow

    from common.config import UserError

    common = [*FAST, "loop.eval_every=2", "loop.ckpt_every=2", "eval.real_bitstreams=false"]
    train(compose("phase1", [*common, "loop.max_steps=2", "lmbda=0.0067", f"checkpoint.dir={tmp_path}"]))
    first = load_checkpoint(tmp_path / "last.pt")
    later = [*common, "loop.max_steps=4", "lmbda=0.013", f"resume={tmp_path / 'last.pt'}", f"checkpoint.dir={tmp_path}"]
    with pytest.raises(UserError, match=r"was trained with lmbda=0\.0067, this run has lmbda=0\.013"):
        train(compose("phase1", later))
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 2  # the refused resume wrote nothing
    summary = train(compose("phase1", [*later, "resume_allow_changes=true"]))
    assert summary["global_step"] == 4
    resumed = load_checkpoint(tmp_path / "last.pt")
    # best.pt restarted: the best is the new objective's one evaluation, whatever the old one scored
    new_evals = [p["val/loss"] for p in resumed["history"] if "val/loss" in p][1:]
    assert resumed["best_val_loss"] == pytest.approx(min(new_evals))
    assert min(new_evals) > first["best_val_loss"]  # so a best kept from the old objective would show
    mlflow.set_tracking_uri(mlflow_store)
    (run,) = mlflow.search_runs(experiment_names=["phase1"]).to_dict("records")
    assert run["tags.resume_changed.lmbda"] == "0.0067 -> 0.013 (at step 2)"
    assert run["params.lmbda"] == "0.0067"  # MLflow keeps the first value; the tag says what changed
