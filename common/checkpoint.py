"""Checkpoints: one plain dict per file, written atomically, read with `torch.load(weights_only=True)`.

Key names follow the original code (`model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`, `epoch`,
`global_step`, `best_val_loss`); on top of them a checkpoint carries what an exact resume needs: the data
position, the MLflow run id, the resolved config as a plain dict, every RNG state as tensors, and extras such
as a tokenizer (stored as JSON text). Nothing in it needs pickling, so loading never executes code.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import shutil
import socket
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


class DiskFullError(OSError):
    """A file could not be written for want of space; one line naming it. What was there before is kept."""


# what torch.save raises when the disk fills under it (its zip writer checks the bytes it wrote)
_TORCH_SHORT_WRITE = ("unexpected pos", "failed writing")
_LOW_SPACE = 64 << 20  # bytes: after a failed write, less than this left means the disk was the cause


def _out_of_space(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_SHORT_WRITE):
        return shutil.disk_usage(folder).free < _LOW_SPACE
    return False


class OutputPathError(ValueError):
    """An output path that cannot be written (a file where a folder must be, a read-only folder), found before
    the work that would fill it; the message is one line naming the option that set it."""


def check_folder(folder: str | os.PathLike, key: str) -> Path:
    """`folder` as a Path if it is, or can be made, a writable folder; else an OutputPathError naming `key`
    (the option that set it). Creates nothing."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise OutputPathError(f"{key}={folder} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{key}={folder} cannot be written: {existing} is read-only")
    return folder


def check_output_file(path: str | os.PathLike, key: str, inputs: dict[str, Any] | None = None) -> Path:
    """`path` as a Path if a file can be written there (its folder made if need be) and it is none of the
    command's `inputs` ({what: path}), which writing it would destroy; else an OutputPathError."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{key}={path} is a folder; name a file")
    for what, source in (inputs or {}).items():
        if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
            raise OutputPathError(f"{key}={path} is this command's {what}; writing it would destroy it")
    check_folder(path.parent, f"{key}'s folder")
    return path


def check_unclaimed(folder: str | os.PathLike, key: str, resume: str | os.PathLike | None) -> None:
    """A folder holding checkpoints (in it or in its checkpoints/) belongs to the run that wrote them: only a run
    resuming from one of them may write there, so a new run never replaces another's last.pt or best.pt."""
    folder = Path(folder)
    held = sorted(folder.glob("*.pt")) + sorted((folder / "checkpoints").glob("*.pt"))
    if not held:
        return
    owned = {folder.resolve(), (folder / "checkpoints").resolve()}
    target = Path(resume) if resume else None
    if target is not None and target.is_dir():
        target = last_in_run_folder(target)
    if target is not None and target.is_file() and target.resolve().parent in owned:
        return
    raise OutputPathError(
        f"{key}={folder} holds another run's checkpoints ({held[0].name}): give resume={held[0]} to continue "
        "that run, or choose a new folder"
    )


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """`write(temporary path)` fills a file in `path`'s folder (same suffix, so writers that go by the suffix
    pick the right format); it is fsynced and renamed over `path`. A crash (even SIGKILL) at any point leaves
    either the old file or the new one, never a torn one; a full disk is a DiskFullError. The folder is made
    if need be."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: give a file path to write", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    except PermissionError:
        why = f"{path} cannot be written: no permission to write in {path.parent}"
        raise PermissionError(errno.EACCES, why) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the rest of a team
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(err, path.parent):
            free = shutil.disk_usage(path.parent).free / 2**20
            raise DiskFullError(
                f"disk full: {path} could not be written ({free:.1f} MiB free in {path.parent}); the files "
                "written before are kept: free some space and run again (a training run resumes from last.pt)",
            ) from None
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically (write_atomically)."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    payload["tensors_checksum"] = tensors_checksum(every_tensor(payload))  # weights, optimizer state, the rest

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    return write_atomically(path, write)


def sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex): what a release's manifest and a run's init_from tag name weights by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_torch_file(path: str | os.PathLike, map_location="cpu") -> Any:
    """`torch.load(weights_only=True)` of a file, with a one-line CheckpointError naming it when it is missing,
    truncated, or holds objects that cannot be loaded safely. The checks of what it holds are the caller's."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a torn zip, a text file, ...: torch raises whatever its reader hits first
        unsafe = isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower()
        if unsafe and zipfile.is_zipfile(path):  # a real torch file (zip) that holds arbitrary objects
            raise CheckpointError(f"checkpoint {path} holds objects that cannot be loaded safely") from None
        detail = _first_line(err)
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint ({detail})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:120] if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    `kind` (e.g. "phase1") is checked against the checkpoint's own `kind`, so a checkpoint of the other phase
    is refused with a clear message instead of failing later inside `load_state_dict`."""
    path = Path(path)
    payload = read_torch_file(path, map_location)
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project (no model_state_dict)")
    if kind is not None and payload.get("kind") not in (None, kind):
        raise CheckpointError(
            f"checkpoint {path} is a {payload.get('kind')} checkpoint, but a {kind} checkpoint is needed"
        )
    check_checksum(payload, path)
    return payload


def tensor_records(state_dict: dict[str, Any]) -> Iterator[tuple[bytes, bytes]]:
    """(b"name|dtype|shape", raw bytes) of every tensor, sorted by name: what a checksum or hash of weights covers."""
    for name in sorted(state_dict):
        value = state_dict[name]
        if not torch.is_tensor(value):
            continue
        tensor = value.detach().cpu().contiguous()
        data = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        yield f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), data


def tensors_checksum(state_dict: dict[str, Any]) -> int:
    """CRC-32 of every tensor's name, dtype, shape and bytes: one flipped bit in the weights changes it (a
    torn file is caught by the reader already; a flipped bit in a weight is not, and trains on as nonsense)."""
    crc = 0
    for header, data in tensor_records(state_dict):
        crc = zlib.crc32(data, zlib.crc32(header, crc))
    return crc


def every_tensor(payload: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor anywhere in a checkpoint payload (weights, optimizer moments, loop state), by its path."""
    found: dict[str, Any] = {}
    if torch.is_tensor(payload):
        found[prefix] = payload
    elif isinstance(payload, dict):
        for key, value in payload.items():
            if key not in ("model_checksum", "tensors_checksum"):
                found.update(every_tensor(value, f"{prefix}/{key}"))
    elif isinstance(payload, list | tuple):
        for i, value in enumerate(payload):
            found.update(every_tensor(value, f"{prefix}/{i}"))
    return found


def check_checksum(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """A checkpoint whose tensors no longer match the checksum saved with them is refused, naming the file.
    Files written before every tensor was covered carry `model_checksum`, over the weights alone."""
    if "tensors_checksum" in payload:
        if payload["tensors_checksum"] != tensors_checksum(every_tensor(payload)):
            raise CheckpointError(
                f"checkpoint {path} is corrupted: its tensors (weights, optimizer or loop state) do not match "
                "the checksum saved with them"
            )
    elif "model_checksum" in payload and payload["model_checksum"] != tensors_checksum(payload["model_state_dict"]):
        raise CheckpointError(f"checkpoint {path} is corrupted: its weights do not match the checksum saved with them")


def last_in_run_folder(folder: Path) -> Path:
    """A run folder's last checkpoint: <folder>/checkpoints/last.pt, or <folder>/last.pt (checkpoint.dir=folder)."""
    return folder / "checkpoints" / "last.pt" if (folder / "checkpoints").is_dir() else folder / "last.pt"


def resolve_resume(resume: str | os.PathLike | None) -> Path | None:
    """The checkpoint a `resume=` setting names: a checkpoint file, or a run folder (its checkpoints/last.pt)."""
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        path = last_in_run_folder(path)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no checkpoint at {path}")
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this filesystem/OS; the rename itself is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CLAIM_FILE = ".claimed"  # holds an advisory lock while a run writes the folder


def _claim_folder(folder: Path) -> int | None:
    """Lock `folder` for this process, so two runs started together never write one folder: the check for
    another run's checkpoints (check_unclaimed) cannot see a run that has not saved yet."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no advisory locks
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / CLAIM_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputPathError(
            f"checkpoint.dir={folder} is being written by a running run ({holder}): choose another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd


class CheckpointManager:
    """Keeps `step_XXXXXXXX.pt` files (the last `keep_last`), plus `last.pt` and `best.pt`.

    `last.pt`/`best.pt` are hard links to a step file when the filesystem allows (no second copy on disk),
    replaced atomically, so a reader always finds a complete file."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3, claim: bool = False):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last={keep_last} must be >= 1")
        self.folder = check_folder(folder, "checkpoint.dir")  # now, not at the first save hours later
        self.keep_last = keep_last
        self._claim = _claim_folder(self.folder) if claim else None

    def release(self) -> None:
        """Let another run write here (the OS also lets go when the process ends, however it ends)."""
        if self._claim is not None:
            (self.folder / CLAIM_FILE).unlink(missing_ok=True)
            os.close(self._claim)
            self._claim = None

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def save(self, payload: dict[str, Any], step: int, is_best: bool = False) -> Path:
        step_path = save_checkpoint(self.folder / f"step_{step:08d}.pt", payload)
        self._point(self.last, step_path)
        if is_best:
            self._point(self.best, step_path)
        self._prune()
        return step_path

    def latest(self) -> Path | None:
        """The checkpoint a resume should start from, or None when the folder has none."""
        return self.last if self.last.is_file() else None

    def _point(self, alias: Path, target: Path) -> None:
        tmp = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError:
            import shutil

            shutil.copyfile(target, tmp)
        os.replace(tmp, alias)

    def _prune(self) -> None:
        # best.pt is its own link (or copy), so removing an old step file never removes the best one.
        steps = sorted(p for p in self.folder.iterdir() if _STEP_FILE.match(p.name))
        for old in steps[: -self.keep_last]:
            old.unlink()


def load_model_state(model: torch.nn.Module, state_dict: dict[str, Any], source: str | os.PathLike) -> None:
    """`model.load_state_dict(state_dict)`, with a checkpoint of another model size or kind refused in one line
    that names `source` and what differs (torch's own error lists every key over many lines)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    # Only parameters: buffers such as CompressAI's CDF tables are sized by the model's own load_state_dict.
    params = dict(model.named_parameters())
    shapes = [k for k in params if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape(s) differ (e.g. {k}: checkpoint {tuple(state_dict[k].shape)}, "
                         f"model {tuple(own[k].shape)})")  # fmt: skip
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"checkpoint {source} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state_dict)
