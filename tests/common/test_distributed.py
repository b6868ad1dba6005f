"""Training under DistributedDataParallel: 2 CPU processes (gloo) against 1 process with the double batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from phase2.data import builtin_articles
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _worker(rank: int, world: int, port: int, phase: str, overrides: list[str], out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    from common.config import compose

    train = __import__(f"{phase}.train", fromlist=["train"]).train
    points = []
    train(compose(phase, overrides), on_log=lambda step, p: points.append({"step": step, **p}))
    Path(out, f"rank{rank}.json").write_text(json.dumps(points))


def _run(phase: str, overrides: list[str], world: int, out: Path) -> list[list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    if world == 1:
        _worker(0, 1, free_port(), phase, overrides, str(out))
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(key)
    else:
        mp.start_processes(
            _worker, args=(world, free_port(), phase, overrides, str(out)), nprocs=world, start_method="spawn"
        )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _train_losses(points: list[dict]) -> list[float]:
    return [p["train/loss"] for p in points if "train/loss" in p]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n\n".join(builtin_articles()[:4]))
    return path


@pytest.mark.slow
def test_phase2_two_ranks_equal_one_rank_with_the_double_batch(text, tmp_path):
    common = [
        "model=debug",
        "data=file",
        f"data.path={text}",
        "seq_len=32",
        "loop.max_steps=5",
        "loop.log_every=1",
        "loop.eval_every=0",
        "loop.progress=false",
        "logger=none",
        "device=cpu",
        "diagnostics_every=0",
        f"paths.output_root={tmp_path / 'outputs'}",
    ]
    two = _run("phase2", [*common, "batch_size=4", f"checkpoint.dir={tmp_path / 'two'}"], 2, tmp_path / "r2")
    one = _run("phase2", [*common, "batch_size=8", f"checkpoint.dir={tmp_path / 'one'}"], 1, tmp_path / "r1")
    assert _train_losses(two[0]) == _train_losses(two[1])  # every rank logs the global mean
    assert _train_losses(two[0]) == pytest.approx(_train_losses(one[0]), rel=1e-4)
    assert (tmp_path / "two" / "last.pt").exists()


@pytest.mark.slow
def test_phase1_balanced_task_weights_agree_across_ranks_and_one_run_is_logged(tmp_path, mlflow_store):
    import mlflow

    common = [
        "model=tiny",
        "optim=balanced",
        "data.patch_size=64",
        "loop.max_steps=4",
        "loop.log_every=1",
        "loop.eval_every=0",
        "loop.progress=false",
        "device=cpu",
        "eval.real_bitstreams=false",
        f"paths.output_root={tmp_path / 'outputs'}",
    ]
    two = _run(
        "phase1",
        [*common, "data.batch_size=2", "logger.run_name=ddp", f"checkpoint.dir={tmp_path / 'two'}"],
        2,
        tmp_path / "r2",
    )
    one = _run(
        "phase1",
        [*common, "data.batch_size=4", "logger=none", f"checkpoint.dir={tmp_path / 'one'}"],
        1,
        tmp_path / "r1",
    )
    weights = [[p["train/task_weight_distortion"] for p in rank if "train/task_weight_distortion" in p] for rank in two]
    assert len(weights[0]) == 4 and weights[0] == weights[1]  # bit for bit: FAMO saw the same global losses
    # same samples, same start; only the quantization noise differs (seeded per rank)
    assert _train_losses(two[0]) == pytest.approx(_train_losses(one[0]), rel=0.05)
    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["phase1"])
    assert len(runs) == 1  # rank 0 alone logs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "last.pt", "step_00000004.pt"]


@pytest.mark.slow
def test_torchrun_end_to_end_and_resume(text, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "phase2.train",
        "model=debug",
        "data=file",
        f"data.path={text}",
        "seq_len=32",
        "batch_size=4",
        "loop.eval_every=0",
        "loop.progress=false",
        "logger=none",
        "device=cpu",
        f"checkpoint.dir={ckpt}",
        f"paths.output_root={tmp_path / 'outputs'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*base, "loop.max_steps=3"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "phase2").iterdir())
    assert len(runs) == 1 and (runs[0] / "training_history.json").exists()  # one folder per run, not per rank
    done = subprocess.run(
        [*base, "loop.max_steps=6", f"resume={ckpt / 'last.pt'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished at step 6 (0 skipped)" in done.stdout
