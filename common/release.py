"""Released weights: the final weights of a finished training run, stripped to what a user starts from, in a
folder with a manifest that says how each file was made and lets anyone check it.

    python -m common.release weights outputs/demo_weights/phase1 outputs/demo_weights/phase2  # make demo-weights
    python -m common.release weights --check        # every file manifest.json lists (make demo runs this first)

A released file is a checkpoint of this project (init_from=, the evaluate, codec and generate CLIs take it)
without the optimizer, scheduler, data and RNG state: the run's last.pt, the weights its test numbers are of.
manifest.json lists for each file its sha256 and size; the run (folder, MLflow run, experiment and store) with
that run's commit, command and device; the model, objective, data and step count; and the run's final validation
and test numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.checkpoint import last_in_run_folder, load_checkpoint, save_checkpoint, sha256, write_atomically
from common.config import run_guarded
from common.tracking import Store, default_tracking_uri, redacted, sqlite_file

MANIFEST = "manifest.json"
REBUILD = "make demo-weights"
# What a user of the weights needs; the rest of a training checkpoint is for resuming that run.
KEPT = ("kind", "model_state_dict", "config", "global_step", "init_from_steps", "mlflow_run_id", "tokenizer_json")


class ReleaseError(ValueError):
    """A run that cannot be released, or released weights that fail their check: one line, exit status 2."""


def released_name(config: dict[str, Any]) -> str:
    """phase1_tiny_adam.pt, phase2_debug_bytes.pt: the phase, the model, and what else tells two apart."""
    kind, model = config.get("task_name"), config.get("model") or {}
    try:
        if kind == "phase1":
            return f"phase1_{model['name']}_{config['optim']['name']}.pt"
        if kind == "phase2":
            name = model["preset"] if model.get("kind") == "phase2" else model["kind"]
            return f"phase2_{name}_{config['tokenizer']['kind']}.pt"
    except (KeyError, TypeError) as err:
        raise ReleaseError(f"the run's config lacks {err} to name its weights by") from None
    raise ReleaseError(f"a run of task {kind!r} cannot be released: only phase1 and phase2 runs")


@dataclass
class Candidate:
    """A finished, tracked run checked for release: its folder, last checkpoint, MLflow record and file name."""

    run_dir: Path
    payload: dict[str, Any]
    record: dict[str, Any]
    tracking_uri: str
    name: str


def candidate(run_dir: Path) -> Candidate:
    """Read and check a run before anything is written: finished to its last step, tracked, its MLflow run
    FINISHED with test numbers (of these, its final weights)."""
    payload = load_checkpoint(last_in_run_folder(run_dir))
    config = payload.get("config") or {}
    steps, planned = payload.get("global_step", 0), (config.get("loop") or {}).get("max_steps")
    if steps != planned:
        raise ReleaseError(f"run {run_dir} is not finished (step {steps} of {planned}): finish it first")
    if not payload.get("mlflow_run_id"):
        raise ReleaseError(f"run {run_dir} was not tracked (logger=none): its commit and device are not on record")
    uri = payload.get("tracking_uri") or (config.get("logger") or {}).get("tracking_uri") or default_tracking_uri()
    if (database := sqlite_file(uri)) is not None and not database.is_file():
        raise ReleaseError(f"run {run_dir} was tracked in {uri}, which does not exist here")
    record = Store(uri).run_record(payload["mlflow_run_id"])
    if record["status"] != "FINISHED" or not any(k.startswith("test/") for k in record["metrics"]):
        raise ReleaseError(
            f"run {run_dir}: its MLflow run {payload['mlflow_run_id']} is {record['status']} without test numbers "
            "of its final weights: only a finished run is released"
        )
    return Candidate(run_dir, payload, record, uri, released_name(config))


def write_release(c: Candidate, out: Path) -> dict[str, Any]:
    """The weights file and its manifest entry."""
    path = save_checkpoint(out / c.name, {k: c.payload[k] for k in KEPT if k in c.payload})
    config, tags = c.payload.get("config") or {}, c.record["tags"]
    return {
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "kind": c.payload.get("kind"),
        "model": tags.get("model"),
        "parameters": sum(t.numel() for t in c.payload["model_state_dict"].values() if t.is_floating_point()),
        "objective": _objective(config),
        "data": config.get("data"),
        "steps": c.payload["global_step"],
        "metrics": {k: v for k, v in sorted(c.record["metrics"].items()) if k.split("/")[0] in ("val", "test")},
        "run": {
            "folder": str(c.run_dir),
            "mlflow_run_id": c.record["run_id"],
            "mlflow_experiment": c.record["experiment"],
            "tracking_uri": redacted(c.tracking_uri),
            "status": c.record["status"],
        },
        "commit": tags.get("git_commit"),
        "uncommitted_changes": tags.get("git_dirty") == "true",
        "command": tags.get("command"),
        "device": tags.get("device"),
    }


def _objective(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("task_name") == "phase1":
        return {"lmbda": config.get("lmbda"), "loss_metric": config.get("loss_metric"), "optim": config.get("optim")}
    return {"tokenizer": config.get("tokenizer"), "seq_len": config.get("seq_len"), "optim": config.get("optim")}


def release(out: Path, run_dirs: list[Path]) -> Path:
    """Release each run into `out` and record it in out/manifest.json (entries of other files are kept). Every run
    is checked first: a run that cannot be released leaves the folder as it was."""
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out} is a file: give the folder the weights go to")
    candidates = [candidate(run_dir) for run_dir in run_dirs]
    names = [c.name for c in candidates]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReleaseError(f"two of the runs would both be released as {twice[0]}: release one of them")
    manifest_path = out / MANIFEST
    manifest = read_manifest(out) if manifest_path.is_file() else {"files": {}}
    manifest["made_by"] = REBUILD
    for c in candidates:
        entry = manifest["files"][c.name] = write_release(c, out)
        print(f"{out / c.name}: {entry['bytes'] / 2**20:.2f} MiB, sha256 {entry['sha256'][:12]}..., from {c.run_dir}")
    write_atomically(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest_path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{path} is missing: rebuild the weights with `{REBUILD}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleaseError(f"{path} is not a manifest ({err}): restore it with `git checkout {path}`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ReleaseError(f"{path} lists no files: restore it with `git checkout {path}`")
    return manifest


def check(folder: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Every file the manifest lists (or those of `names`) is there with its sha256; returns the manifest."""
    manifest = read_manifest(folder)
    if not manifest["files"]:  # a check would check nothing and pass
        raise ReleaseError(f"{folder / MANIFEST} lists no files: rebuild the weights with `{REBUILD}`")
    for name in names or sorted(manifest["files"]):
        entry, path = manifest["files"].get(name), folder / name
        if entry is None:
            raise ReleaseError(f"{folder / MANIFEST} lists no {name}: rebuild the weights with `{REBUILD}`")
        if not path.is_file():
            raise ReleaseError(f"{path} is missing: restore it with `git checkout {path}` or rebuild with `{REBUILD}`")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ReleaseError(f"{folder / MANIFEST} has no sha256 for {name}: restore it with `git checkout`")
        if sha256(path) != entry["sha256"]:
            raise ReleaseError(
                f"{path} does not match its sha256 in {folder / MANIFEST} (corrupt or replaced): restore it with "
                f"`git checkout {path}` or rebuild with `{REBUILD}`"
            )
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.release", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="where the released files and manifest.json live (weights)")
    p.add_argument("runs", nargs="*", help="run folders of finished runs to release into it")
    p.add_argument("--check", nargs="*", metavar="NAME", help="check the listed files (all without names)")
    a = p.parse_args(argv)

    def body() -> None:
        folder = Path(a.folder)
        if a.check is not None:
            manifest = check(folder, a.check)
            print(f"{folder}: {len(a.check or manifest['files'])} released file(s) match {MANIFEST}")
        elif a.runs:
            print(f"wrote {release(folder, [Path(r) for r in a.runs])}")
        else:
            raise ReleaseError("give run folders to release, or --check")

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
