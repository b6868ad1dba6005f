"""The bad-input catalogue: each mistake ends with one line `error: ...` naming the problem, a non-zero exit,
no traceback, and nothing previously written is damaged. Runs the real command lines in subprocesses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import save_checkpoint
from common.tracking import REPO_ROOT

pytestmark = pytest.mark.slow
TRAIN = ["-m", "phase1.train", "logger=none", "model=tiny", "loop.max_steps=1", "data.batch_size=1",
         "data.patch_size=64"]


def _run(args, cwd=REPO_ROOT):
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    return out.returncode, lines, out.stderr


def _assert_one_line(rc, lines, stderr, *needles):
    assert rc != 0
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_folder(tmp_path):
    _assert_one_line(*_run([*TRAIN, "data=folder", f"data.root={tmp_path / 'nope'}"]), "does not exist")


def test_empty_data_folder(tmp_path):
    _assert_one_line(*_run([*TRAIN, "data=folder", f"data.root={tmp_path}"]), "holds no images")


def test_corrupt_images_only(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n garbage")
    _assert_one_line(*_run([*TRAIN, "data=folder", f"data.root={tmp_path}"]), "none of the 1 files")


def test_unknown_model_option():
    _assert_one_line(*_run([*TRAIN, "model=hpcm_huge"]), "model/hpcm_huge", "hpcm_base")


def test_invalid_override():
    _assert_one_line(*_run([*TRAIN, "lamda=0.01"]), "Could not override 'lamda'")


def test_wrong_type_value():
    _assert_one_line(*_run([*TRAIN, "optim.lr=fast"]), "optim.lr='fast' must be a number")


def test_truncated_checkpoint_is_named_and_left_alone(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"kind": "phase1", "model_state_dict": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    before = path.read_bytes()
    _assert_one_line(*_run([*TRAIN, f"resume={path}"]), "last.pt", "truncated")
    assert path.read_bytes() == before


def test_checkpoint_of_the_other_phase(tmp_path):
    path = save_checkpoint(tmp_path / "lm.pt", {"kind": "phase2", "model_state_dict": {}})
    _assert_one_line(*_run([*TRAIN, f"resume={path}"]), "phase2 checkpoint", "phase1 checkpoint is needed")


def test_corrupt_bitstream_writes_nothing(tmp_path):
    from phase1.hpcm import build_hpcm

    ckpt = save_checkpoint(tmp_path / "tiny.pt", {"kind": "phase1", "model_state_dict": build_hpcm("tiny").state_dict(),
                                                  "config": {"model": {"name": "tiny"}}})
    stream = tmp_path / "photo.hpcm"
    stream.write_bytes(b"definitely not an HPCM stream" * 10)
    existing = tmp_path / "out.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(existing)
    before = existing.read_bytes()
    _assert_one_line(*_run(["-m", "phase1.codec", "decode", str(stream), str(existing), "--checkpoint", str(ckpt)]),
                     "photo.hpcm")
    assert existing.read_bytes() == before
    missing = tmp_path / "new.png"
    _assert_one_line(*_run(["-m", "phase1.codec", "decode", str(stream), str(missing), "--checkpoint", str(ckpt)]),
                     "photo.hpcm")
    assert not missing.exists()


# ------------------------------------------------------------------------------------------------ Phase 2
LM = ["-m", "phase2.train", "logger=none", "model=debug", "loop.max_steps=1", "batch_size=2", "seq_len=16"]


@pytest.mark.parametrize("case, args, needles", [
    ("missing text", ["data=file", "data.path={tmp}/nowhere.txt"], ["nowhere.txt", "does not exist"]),
    ("empty folder", ["data=file", "data.path={tmp}/empty"], ["holds no"]),
    ("empty text", ["data=file", "data.path={tmp}/blank.txt"], ["is empty"]),
    ("unknown preset", ["model.preset=huge"], ["huge"]),
    ("unknown group option", ["model=huge"], ["model", "available"]),
    ("invalid override", ["optim.no_such_key=1"], ["no_such_key"]),
    ("wrong type", ["batch_size=many"], ["batch_size", "must be a number"]),
    ("truncated checkpoint", ["resume={tmp}/cut.pt"], ["cut.pt", "truncated"]),
    ("other phase", ["resume={tmp}/codec.pt"], ["phase1 checkpoint", "phase2 checkpoint is needed"]),
])
def test_phase2_bad_input(tmp_path, case, args, needles):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n")
    cut = save_checkpoint(tmp_path / "cut.pt", {"kind": "phase2", "model_state_dict": {"w": torch.zeros(1000)}})
    cut.write_bytes(cut.read_bytes()[:300])
    codec = save_checkpoint(tmp_path / "codec.pt", {"kind": "phase1", "model_state_dict": {}})
    before = {p: p.read_bytes() for p in (cut, codec)}
    argv = [a.format(tmp=tmp_path) for a in args]
    _assert_one_line(*_run([*LM, *argv]), *needles)
    assert {p: p.read_bytes() for p in before} == before  # nothing written before is touched
