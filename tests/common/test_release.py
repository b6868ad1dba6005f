"""Released weights (common/release.py): a finished, tracked run becomes a small checkpoint and a manifest entry
that say how it was made; the check finds a missing, replaced or corrupt file in one line; users start from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from common import REPO_ROOT
from common.checkpoint import read_torch_file
from common.config import compose
from common.release import REBUILD, check, main, release
from common.runtime import device_name

PHASE1 = ["model=tiny", "data.patch_size=64", "data.batch_size=2", "data.repeats=1", "eval.max_images=1",
          "loop.progress=false", "loop.max_steps=2", "loop.eval_every=2", "loop.log_every=1"]  # fmt: skip
PHASE2 = ["model=debug", "seq_len=32", "batch_size=4", "eval.max_batches=2", "loop.progress=false",
          "loop.max_steps=2", "loop.eval_every=2", "loop.log_every=1"]  # fmt: skip


def _run(phase: str, overrides: list[str], folder) -> None:
    from phase1.train import train as train1
    from phase2.train import train as train2

    train = train1 if phase == "phase1" else train2
    train(compose(phase, [*overrides, f"hydra.run.dir={folder}", f"checkpoint.dir={folder / 'checkpoints'}"]))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Both phases trained two steps into one MLflow store and released into one weights folder."""
    root = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        _run("phase1", PHASE1, root / "run1")
        _run("phase2", PHASE2, root / "run2")
        release(root / "weights", [root / "run1", root / "run2"])
    return root


def test_a_release_holds_the_final_weights_without_the_training_state(released):
    weights = released / "weights"
    assert sorted(p.name for p in weights.iterdir()) == [
        "manifest.json",
        "phase1_tiny_adam.pt",
        "phase2_debug_bytes.pt",
    ]
    for name, run in (("phase1_tiny_adam.pt", "run1"), ("phase2_debug_bytes.pt", "run2")):
        payload, last = read_torch_file(weights / name), read_torch_file(released / run / "checkpoints" / "last.pt")
        assert "optimizer_state_dict" not in payload and "rng_state" not in payload
        assert all(torch.equal(payload["model_state_dict"][k], v) for k, v in last["model_state_dict"].items())
    assert "tokenizer_json" in read_torch_file(weights / "phase2_debug_bytes.pt")  # generate needs nothing else


def test_the_manifest_says_how_each_file_was_made(released):
    manifest = json.loads((released / "weights" / "manifest.json").read_text())
    assert manifest["made_by"] == REBUILD
    codec, lm = manifest["files"]["phase1_tiny_adam.pt"], manifest["files"]["phase2_debug_bytes.pt"]
    for entry in (codec, lm):
        assert entry["steps"] == 2 and entry["run"]["status"] == "FINISHED" and len(entry["run"]["mlflow_run_id"]) == 32
        assert entry["commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                                 text=True).stdout.strip()  # fmt: skip
        assert entry["device"] == device_name(torch.device("cpu")) and entry["command"]  # the pytest command here
    assert codec["objective"]["lmbda"] == 0.013 and codec["objective"]["optim"]["name"] == "adam"
    assert codec["data"]["patch_size"] == 64 and codec["run"]["mlflow_experiment"] == "phase1"
    assert {"val/loss", "test/bpp_real", "test/psnr"} <= set(codec["metrics"])
    assert {"val/bits_per_byte", "test/bits_per_byte"} <= set(lm["metrics"])
    assert lm["objective"]["tokenizer"]["kind"] == "bytes" and lm["model"] == "debug"
    assert codec["parameters"] > lm["parameters"] > 0


def test_training_starts_from_a_released_file(released, tmp_path):
    weights = released / "weights"
    _run("phase1", [*PHASE1, "logger=none", f"init_from={weights / 'phase1_tiny_adam.pt'}"], tmp_path / "a")
    _run("phase2", [*PHASE2, "logger=none", f"init_from={weights / 'phase2_debug_bytes.pt'}"], tmp_path / "b")


def test_the_check_finds_a_missing_replaced_or_corrupt_file(released, tmp_path, capsys):
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(released / "weights", weights)
    assert main([str(weights), "--check"]) == 0
    assert "2 released file(s) match manifest.json" in capsys.readouterr().out
    data = bytearray((weights / "phase1_tiny_adam.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (weights / "phase1_tiny_adam.pt").write_bytes(bytes(data))
    assert main([str(weights), "--check", "phase2_debug_bytes.pt"]) == 0  # only the file asked about
    assert main([str(weights), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {weights / 'phase1_tiny_adam.pt'} does not match its sha256 in {weights / 'manifest.json'}"
                   f" (corrupt or replaced): restore it with `git checkout {weights / 'phase1_tiny_adam.pt'}` or "
                   f"rebuild with `{REBUILD}`"]  # fmt: skip
    (weights / "phase2_debug_bytes.pt").unlink()
    with pytest.raises(ValueError, match=r"phase2_debug_bytes.pt is missing: restore it"):
        check(weights, ["phase2_debug_bytes.pt"])
    (weights / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json is not a manifest"):
        check(weights)


def test_an_unfinished_or_untracked_run_is_not_released(tmp_path, mlflow_store):
    _run("phase1", [*PHASE1, "logger=none"], tmp_path / "untracked")
    with pytest.raises(ValueError, match="was not tracked \\(logger=none\\)"):
        release(tmp_path / "weights", [tmp_path / "untracked"])
    _run("phase1", [*PHASE1, "loop.max_steps=1", "loop.eval_every=1"], tmp_path / "short")
    payload = read_torch_file(tmp_path / "short" / "checkpoints" / "last.pt")
    payload["config"]["loop"]["max_steps"] = 5  # as a run stopped at step 1 of 5
    from common.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "short" / "checkpoints" / "last.pt", payload)
    done = subprocess.run([sys.executable, "-m", "common.release", str(tmp_path / "weights"), str(tmp_path / "short")],
                          cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: run {tmp_path / 'short'} is not finished (step 1 of 5): finish it first"
    assert not (tmp_path / "weights" / "manifest.json").exists()


def test_a_run_the_store_does_not_hold_is_refused_before_anything_is_written(released, tmp_path, monkeypatch):
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(released / "weights", weights)
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    payload = read_torch_file(released / "run2" / "checkpoints" / "last.pt")
    payload["mlflow_run_id"], payload["tracking_uri"] = "0" * 32, f"sqlite:///{released / 'mlflow.db'}"
    from common.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "gone" / "checkpoints" / "last.pt", payload)
    with pytest.raises(ValueError, match=f"run {'0' * 32} is not in the MLflow store sqlite:///"):
        release(weights, [released / "run1", tmp_path / "gone"])  # the first run is fine, the second is not
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before  # nothing replaced, manifest intact
    payload["tracking_uri"] = f"sqlite:///{tmp_path / 'nowhere.db'}"
    save_checkpoint(tmp_path / "gone" / "checkpoints" / "last.pt", payload)
    with pytest.raises(ValueError, match="nowhere.db, which does not exist here"):
        release(weights, [tmp_path / "gone"])
    assert not (tmp_path / "nowhere.db").exists()  # and no empty store was made in its place
    with pytest.raises(ValueError, match="would both be released as phase1_tiny_adam.pt"):
        release(weights, [released / "run1", released / "run1"])


def test_store_uris_are_printed_and_kept_without_their_password():
    from common.tracking import redacted

    assert redacted("postgresql://ann:s3cret@db:5432/mlflow") == "postgresql://ann:***@db:5432/mlflow"
    assert redacted("http://user:pw@tracker:5000") == "http://user:***@tracker:5000"
    assert redacted("sqlite:////work/mlflow.db") == "sqlite:////work/mlflow.db"
    assert redacted("http://tracker:5000") == "http://tracker:5000"  # a port is no password
