"""A study is one YAML file (sweeps/studies/*.yaml): the base experiment, sizes, the search space, the
objective, sampler, pruner, trial count and storage. This module reads and checks it."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
PARAM_TYPES = ("categorical", "float", "int")


@dataclass
class StudySpec:
    name: str
    phase: str  # which train(cfg) the trials call: phase1 | phase2
    objective: str  # a key of train()'s summary on validation data, e.g. final/val/loss
    direction: str = "minimize"
    overrides: list[str] = field(default_factory=list)  # Hydra overrides every trial gets
    sizes: dict[str, list[str]] = field(default_factory=dict)  # named extra overrides: demo, full
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: str = "grid"  # grid | tpe
    pruner: str = "none"  # none | median
    pruner_warmup_evals: int = 1  # a trial's first N evaluations are never pruned
    report_metric: str = "val/loss"  # intermediate value reported at each evaluation (for pruners)
    n_trials: int = 12
    seed: int = 0

    def grid(self) -> dict[str, list]:
        """The search space as a grid (GridSampler); only categorical parameters form a grid."""
        not_categorical = [k for k, v in self.search_space.items() if v["type"] != "categorical"]
        if not_categorical:
            raise ValueError(f"sampler=grid needs categorical parameters; {not_categorical} are not: use sampler=tpe")
        return {k: list(v["choices"]) for k, v in self.search_space.items()}


def load_study(path_or_name: str | Path, sampler: str | None = None) -> StudySpec:
    """A study file by path, or by name under sweeps/studies/ (`sampler` overrides the file's)."""
    path = Path(path_or_name)
    if not path.is_file():
        path = STUDIES_DIR / f"{path_or_name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no study file {path_or_name!r}; known studies: {known}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ValueError(f"study file {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"study file {path} must be a mapping of study keys, not {type(raw).__name__}")
    unknown = set(raw) - set(StudySpec.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown study key(s) {sorted(unknown)}")
    if sampler:
        raw["sampler"] = sampler
    _check_kinds(raw, path)
    spec = StudySpec(**raw)
    _validate(spec, path)
    return spec


KINDS = {
    "overrides": list,
    "sizes": dict,
    "search_space": dict,
    "pruner_warmup_evals": int,
    "n_trials": int,
    "seed": int,
}  # fmt: skip (the others are text)


def _check_kinds(raw: dict[str, Any], path: Path) -> None:
    """Each key present and of its kind, so a slip in the file is one line naming the key, not a traceback."""
    missing = [k for k, f in StudySpec.__dataclass_fields__.items() if f.default is f.default_factory is MISSING]
    missing = [k for k in missing if k not in raw]
    if missing:
        raise ValueError(f"{path}: the study needs {', '.join(missing)}")
    for key, value in raw.items():
        kind = KINDS.get(key, str)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = {list: "a list", dict: "a mapping", int: "a whole number", str: "text"}[kind]
            raise ValueError(f"{path}: {key}={value!r} must be {what}")


def _validate(spec: StudySpec, path: Path) -> None:
    if not re.fullmatch(r"[\w.-]+", spec.name) or spec.name in (".", ".."):  # it names files and folders
        raise ValueError(f"{path}: name={spec.name!r} must be a plain name (letters, digits, '_', '.', '-')")
    if spec.phase not in ("phase1", "phase2"):
        raise ValueError(f"{path}: phase={spec.phase!r} must be phase1 or phase2")
    if spec.direction not in ("minimize", "maximize"):
        raise ValueError(f"{path}: direction={spec.direction!r} must be minimize or maximize")
    if spec.sampler not in ("grid", "tpe"):
        raise ValueError(f"{path}: sampler={spec.sampler!r} must be grid or tpe")
    if spec.pruner not in ("none", "median"):
        raise ValueError(f"{path}: pruner={spec.pruner!r} must be none or median")
    for name, param in spec.search_space.items():
        if not isinstance(param, dict):
            raise ValueError(f"{path}: search_space.{name} must be a mapping with a type (and choices or low/high)")
        if param.get("type") not in PARAM_TYPES:
            raise ValueError(f"{path}: search_space.{name}.type must be one of {PARAM_TYPES}")
        if param["type"] == "categorical" and not param.get("choices"):
            raise ValueError(f"{path}: search_space.{name} needs a non-empty `choices` list")
        if param["type"] in ("float", "int") and not {"low", "high"} <= set(param):
            raise ValueError(f"{path}: search_space.{name} needs `low` and `high`")
    for key in ("objective", "report_metric"):
        if "test/" in getattr(spec, key):
            raise ValueError(
                f"{path}: {key}={getattr(spec, key)!r} would select on the test data; use a "
                "validation metric (final/val/loss, val/loss): test numbers are for final reports"
            )
    if spec.n_trials < 1:
        raise ValueError(f"{path}: n_trials={spec.n_trials} must be >= 1")
