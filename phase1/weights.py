"""HPCM weights from a checkpoint of this project or of the official code, for training (`init_from`),
evaluation and the codec.

    model, meta = load_codec("best.pt", device="cuda")     # eval mode, coding tables built
    load_weights_into(model, "official.pth.tar")           # fine-tune the published weights
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from common.checkpoint import CheckpointError, check_checksum, read_torch_file
from phase1.hpcm import CONFIGS, HPCM, build_hpcm, canonical_name, load_hpcm_state_dict


def read_checkpoint(path: str | Path, model_name: str | None = None):
    """-> (state_dict, model name, meta). Accepts this project's checkpoints ({"model_state_dict", "config"})
    and the official code's (a plain state_dict, possibly with DataParallel's "module." prefix). `meta` holds
    what the project's config says about the run (model, lmbda, optim) and the codec's training steps, its own
    and those of any weights it started from (None: official weights, trained to the end)."""
    path = Path(path)
    obj = read_torch_file(path)
    meta = {"source": "official", "steps": None}
    if isinstance(obj, dict) and obj.get("kind") not in (None, "phase1"):  # e.g. a Phase 2 language model
        raise CheckpointError(f"checkpoint {path} is a {obj['kind']} checkpoint, but a phase1 checkpoint is needed")
    if isinstance(obj, dict) and "model_state_dict" in obj:
        check_checksum(obj, path)
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        optim = (cfg.get("optim") or {}).get("name")
        before = obj.get("init_from_steps", 0)  # the steps of the weights its run started from (None: official)
        steps = None if before is None else before + obj.get("global_step", 0)
        meta = {"source": "project", "lmbda": cfg.get("lmbda"), "optim": optim, "steps": steps}
        if model_name is None and isinstance(cfg.get("model"), dict):
            model_name = cfg["model"].get("name")
        obj = obj["model_state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no model state_dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    name = canonical_name(model_name) if model_name else _infer_model(obj, path)
    meta["model"] = name
    return obj, name, meta


def _infer_model(state_dict: dict, path) -> str:
    """The model whose parameter shapes the state_dict has (official checkpoints carry no model name)."""
    for name in CONFIGS:
        with torch.device("meta"):
            own = build_hpcm(name).state_dict()
        params = {k for k in own if not _is_table(k) and not k.startswith("adaptive_params_list.")}
        if all(k in state_dict and state_dict[k].shape == own[k].shape for k in params):
            return name
    raise CheckpointError(f"checkpoint {path} matches none of the HPCM models {sorted(CONFIGS)}; pass --model")


def _is_table(key: str) -> bool:
    return key in ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                   "quantized_cdf_y", "cdf_length_y", "offset_y")  # fmt: skip


def load_weights_into(model: HPCM, checkpoint) -> dict:
    """Load a project or official checkpoint into `model` (e.g. to fine-tune the published HPCM); the
    checkpoint's model must be the same. Returns its meta (read_checkpoint)."""
    state_dict, name, meta = read_checkpoint(checkpoint, model.config.name)
    _load(model, state_dict, name, checkpoint)
    return meta


def _load(model: HPCM, state_dict: dict, name: str, checkpoint) -> list[str]:
    try:
        notes = load_hpcm_state_dict(model, state_dict)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {checkpoint} does not fit {name}: {detail}") from None
    for note in notes:
        if "update()" not in note:
            print(f"note: {checkpoint}: {note}", file=sys.stderr)
    return notes


def load_codec(checkpoint, model_name: str | None = None, device="cpu") -> tuple[HPCM, dict]:
    """(HPCM in eval mode with coding tables, meta) from a project or official checkpoint."""
    state_dict, name, meta = read_checkpoint(checkpoint, model_name)
    model = build_hpcm(name)
    _load(model, state_dict, name, checkpoint)
    model = model.to(device).eval()
    model.update()
    return model, meta
