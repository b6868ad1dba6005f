"""Checkpoints: one plain dict per file, written atomically, read with `torch.load(weights_only=True)`.

Key names follow the seeds (`model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`, `epoch`,
`global_step`, `best_val_loss`); on top of them a checkpoint carries what an exact resume needs: the data
position, the MLflow run id, the resolved config as a plain dict, every RNG state as tensors, and extras such
as a tokenizer (stored as JSON text). Nothing in it needs pickling, so loading never executes code.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash (even SIGKILL) at any point leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    `kind` (e.g. "phase1") is checked against the checkpoint's own `kind`, so a checkpoint of the other phase
    is refused with a clear message instead of failing later inside `load_state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint ({detail})") from None
    except Exception as err:  # weights_only refuses pickled objects with UnpicklingError and friends
        raise CheckpointError(
            f"checkpoint {path} holds objects that cannot be loaded safely ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project (no model_state_dict)")
    if kind is not None and payload.get("kind") not in (None, kind):
        raise CheckpointError(
            f"checkpoint {path} is a {payload.get('kind')} checkpoint, but a {kind} checkpoint is needed"
        )
    return payload


def resolve_resume(resume: str | os.PathLike | None) -> Path | None:
    """The checkpoint a `resume=` setting names: a checkpoint file, or a run folder (its checkpoints/last.pt)."""
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
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


class CheckpointManager:
    """Keeps `step_XXXXXXXX.pt` files (the last `keep_last`), plus `last.pt` and `best.pt`.

    `last.pt`/`best.pt` are hard links to a step file when the filesystem allows (no second copy on disk),
    replaced atomically, so a reader always finds a complete file."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.folder = Path(folder)
        self.keep_last = keep_last

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
