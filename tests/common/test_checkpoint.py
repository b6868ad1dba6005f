import pytest
import torch

from common.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint


def _payload(step=3):
    model = torch.nn.Linear(4, 2)
    return {
        "kind": "phase1",
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": torch.optim.Adam(model.parameters()).state_dict(),
        "scheduler_state_dict": {},
        "epoch": 1,
        "global_step": step,
        "best_val_loss": 0.5,
        "config": {"optim": {"lr": 1e-4}, "names": ["a", "b"]},
        "tokenizer_json": '{"type": "bytes"}',
    }


def test_round_trip_with_weights_only(tmp_path):
    payload = _payload()
    save_checkpoint(tmp_path / "c.pt", payload)
    loaded = load_checkpoint(tmp_path / "c.pt", kind="phase1")
    for k, v in payload["model_state_dict"].items():
        assert torch.equal(loaded["model_state_dict"][k], v)
    assert loaded["config"] == payload["config"]
    assert loaded["global_step"] == 3 and loaded["tokenizer_json"] == payload["tokenizer_json"]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may be left behind"


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pt is truncated") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_foreign_and_missing_files(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(tmp_path / "notes.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Evil:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model_state_dict": {}, "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.pt")


def test_checkpoint_of_the_other_phase_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _payload())
    with pytest.raises(CheckpointError, match="is a phase1 checkpoint, but a phase2 checkpoint is needed"):
        load_checkpoint(tmp_path / "c.pt", kind="phase2")


def test_manager_keeps_last_n_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        manager.save(_payload(step), step, is_best=(step == 20))
    steps = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert steps == ["step_00000030.pt", "step_00000040.pt"]
    assert load_checkpoint(manager.last)["global_step"] == 40
    assert load_checkpoint(manager.best)["global_step"] == 20  # survives pruning of step 20
    assert manager.latest() == manager.last


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", _payload(step=1))

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_resolve_resume_accepts_a_file_or_a_run_folder(tmp_path):
    from common.checkpoint import resolve_resume

    assert resolve_resume(None) is None
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.save(_payload(), 1)
    assert resolve_resume(tmp_path / "run") == manager.last
    assert resolve_resume(manager.last) == manager.last
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_resume(tmp_path / "elsewhere.pt")


def test_a_flipped_bit_in_the_weights_is_caught_on_load(tmp_path):
    """The file stays a valid torch file; only the checksum saved beside the weights tells."""
    path = save_checkpoint(tmp_path / "c.pt", _payload(step=1))
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["model_state_dict"].items() if v.is_floating_point() and v.numel())
    flipped = payload["model_state_dict"][name].clone()
    flipped.view(-1).view(torch.int32)[0] ^= 1 << 30  # an exponent bit: 1e-2 becomes ~1e36
    payload["model_state_dict"][name] = flipped
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="c.pt is corrupted"):
        load_checkpoint(path)


def test_a_flipped_bit_in_the_optimizer_state_is_caught_on_load(tmp_path):
    """Adam's moments are resumed from too: a flipped bit there trains on with a wrong step size."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.pt", {**_payload(step=1), "optimizer_state_dict": opt.state_dict()})
    load_checkpoint(path)  # intact: loads
    payload = torch.load(path, weights_only=True)
    moment = payload["optimizer_state_dict"]["state"][0]["exp_avg_sq"]
    moment.view(-1).view(torch.int32)[0] ^= 1 << 23  # one exponent bit of one second moment
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="c.pt is corrupted: its tensors"):
        load_checkpoint(path)


def test_unclaimed_folders_are_refused_unless_resumed_from(tmp_path):
    from common.checkpoint import OutputPathError, check_unclaimed

    check_unclaimed(tmp_path / "new", "checkpoint.dir", None)  # nothing there yet
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.save(_payload(), 1)
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        with pytest.raises(OutputPathError, match="holds another run's checkpoints"):
            check_unclaimed(folder, "checkpoint.dir", None)
        with pytest.raises(OutputPathError, match="holds another run's checkpoints"):
            check_unclaimed(folder, "checkpoint.dir", tmp_path / "elsewhere.pt")
        check_unclaimed(folder, "checkpoint.dir", manager.last)  # the run that continues them
        check_unclaimed(folder, "checkpoint.dir", tmp_path / "run")


def test_a_checkpoint_of_another_model_size_is_one_line_naming_what_differs():
    from common.checkpoint import load_model_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 8))
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    with pytest.raises(CheckpointError) as err:
        load_model_state(model, other.state_dict(), "big.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("checkpoint big.pt does not fit this model: 2 shape(s) differ")
    assert "0.weight: checkpoint (16, 4), model (8, 4)" in message and "2 unexpected (e.g. 2.weight)" in message
    load_model_state(model, torch.nn.Sequential(torch.nn.Linear(4, 8)).state_dict(), "same.pt")  # fits: loads


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pt", _payload())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the team, like any file the user writes


def test_a_folder_is_claimed_by_one_manager_at_a_time(tmp_path):
    """Two runs started together both find the folder empty; the second to claim it is refused at once."""
    from common.checkpoint import CLAIM_FILE, OutputPathError

    first = CheckpointManager(tmp_path / "ckpt", claim=True)
    with pytest.raises(OutputPathError, match=r"checkpoint.dir=.*ckpt is being written by a running run \(pid \d+"):
        CheckpointManager(tmp_path / "ckpt", claim=True)
    first.release()
    assert not (tmp_path / "ckpt" / CLAIM_FILE).exists()
    CheckpointManager(tmp_path / "ckpt", claim=True).release()  # free again once released
    with pytest.raises(ValueError, match="checkpoint.keep_last=0 must be >= 1"):
        CheckpointManager(tmp_path / "other", keep_last=0)
