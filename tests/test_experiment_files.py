"""The experiment files hold the sizes of the studies, and the benchmarks that run the studies use them: the command
lines a benchmark builds pass the CLI's override check and compose to the file's values."""

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, check_overrides, compose

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file(phase: str, name: str):
    return OmegaConf.load(CONFIG_DIR / phase / "experiment" / f"{name}.yaml")


@pytest.mark.parametrize("optim", ["adam", "balanced"])
def test_rd_study_runs_are_the_experiment_files(tmp_path, optim):
    bench = _bench("bench_phase1_rd")
    args = bench.parse_args(["--work", str(tmp_path), "--", "logger=none"])
    bench.fill_from_experiment(args)
    study = _file("phase1", "rd_study")
    assert (args.model, args.steps) == ("hpcm_base", study.loop.max_steps)

    overrides = bench.run_overrides(optim, 0.0067, args.steps, tmp_path / "run", args, None)
    cfg = check_overrides("phase1", overrides)  # what `python -m phase1.train` checks before it composes
    assert cfg.model.name == "hpcm_base"
    assert cfg.optim.name == optim
    assert cfg.rd_set == study.rd_set
    assert cfg.loop.max_steps == study.loop.max_steps
    assert cfg.checkpoint.keep_last == study.checkpoint.keep_last


def test_rd_study_flags_override_the_experiment_file(tmp_path):
    bench = _bench("bench_phase1_rd")
    args = bench.parse_args(["--model", "tiny", "--steps", "7", "--rd-set", "mine", "--", "logger=none"])
    bench.fill_from_experiment(args)
    cfg = check_overrides("phase1", bench.run_overrides("adam", 0.013, args.steps, tmp_path, args, None))
    assert (cfg.model.name, cfg.loop.max_steps, cfg.rd_set) == ("tiny", 7, "mine")


@pytest.mark.parametrize("model", ["small", "transformer", "transformer_pp"])
def test_lm_comparison_recipe_is_the_experiment_file(model):
    bench = _bench("bench_phase2_lm")
    recipe = bench.recipe_overrides(bench.parse_args([]))
    cfg = check_overrides("phase2", [*recipe, f"model={model}"])
    study = _file("phase2", "lm_comparison")
    assert (cfg.seq_len, cfg.batch_size, cfg.precision) == (study.seq_len, study.batch_size, study.precision)
    assert cfg.loop.max_steps == study.loop.max_steps
    assert cfg.optim.lr == study.optim.lr
    assert cfg.schedule.warmup_steps == study.schedule.warmup_steps
    assert cfg.eval.max_batches is None


def test_lm_comparison_flags_override_the_recipe():
    bench = _bench("bench_phase2_lm")
    args = bench.parse_args(["--steps", "30", "--seq-len", "64", "--lr", "3e-4"])
    cfg = compose("phase2", bench.recipe_overrides(args))
    assert (cfg.loop.max_steps, cfg.loop.eval_every, cfg.seq_len, cfg.optim.lr) == (30, 30, 64, 3e-4)
