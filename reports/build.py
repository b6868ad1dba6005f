"""Reports generated from MLflow runs: Markdown + HTML with PNG plots, every number tagged with its run id.

    python -m reports.build                              # everything in the store -> reports/out/all/
    python -m reports.build --study balanced_gamma_wlr   # one Optuna study
    python -m reports.build --experiment phase1          # one MLflow experiment

Sections (each only when its runs exist): Phase 1 training runs (sweep trials excluded); per R-D set (runs
trained with `rd_set=<name>`: same model, steps and test set) one curve per optimizer and the BD-rate of Balanced
vs Adam; task-weight trajectories; Optuna studies (their trials, best trial, history, parameter importance);
Phase 2 learning curves and diagnostics. Runs without rd_set and Optuna trials are in no R-D curve.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from common import REPO_ROOT
from common.config import run_guarded
from common.tracking import Store, default_tracking_uri, sqlite_file

OUT_ROOT = REPO_ROOT / "reports" / "out"


@dataclass
class Report:
    title: str
    folder: Path
    blocks: list[str] = field(default_factory=list)  # Markdown blocks

    def __post_init__(self) -> None:
        from common.checkpoint import check_folder

        check_folder(self.folder, "the report folder")  # a file in the way is one line, not a traceback
        self.folder.mkdir(parents=True, exist_ok=True)  # sections save their plots before write()

    def heading(self, text: str) -> None:
        self.blocks.append(f"## {text}")

    def text(self, text: str) -> None:
        self.blocks.append(text)

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(_markdown_table(frame))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(f"![{caption}]({name})\n\n*{caption}*")

    def write(self) -> Path:
        md = f"# {self.title}\n\n" + "\n\n".join(self.blocks) + "\n"
        (self.folder / "index.md").write_text(md)
        (self.folder / "index.html").write_text(_html(self.title, self.blocks))
        return self.folder / "index.md"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in HTML; everything else escaped."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(title: str, blocks: list[str]) -> str:
    """A small self-contained HTML rendering of the Markdown blocks (tables, images, headings, text)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if block.startswith("## "):
            parts.append(f"<h2>{html.escape(block[3:])}</h2>")
        elif block.startswith("| "):
            lines = block.splitlines()
            head = [c.strip() for c in lines[0].strip("|").split("|")]
            rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            parts.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
        elif block.startswith("!["):
            alt, src = re.match(r"!\[(.*?)\]\(([^)]*)\)", block).groups()
            parts.append(
                f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>"
            )
        elif block.startswith("- "):
            items = "".join(f"<li>{_inline(item)}</li>" for item in block[2:].split("\n- "))
            parts.append(f"<ul>{items}</ul>")
        elif block.startswith("> "):
            quoted = "\n".join(line.removeprefix("> ").removeprefix(">") for line in block.splitlines())
            parts.append(f"<blockquote>{html.escape(quoted)}</blockquote>")
        else:
            parts.append(f"<p>{_inline(block)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
        "blockquote{white-space:pre-wrap;font-family:serif;border-left:3px solid #ccc;margin-left:0;padding-left:1em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


# ------------------------------------------------------------------------------------------------ data
def load_runs(experiment: str | None = None, study: str | None = None) -> pd.DataFrame:
    """All runs (or one experiment's, or one study's trials) as a DataFrame, one row per run."""
    store = Store()
    names = store.experiment_names()
    if experiment:
        if experiment not in names:
            return pd.DataFrame()
        names = [experiment]
    if not names:
        return pd.DataFrame()
    runs = store.runs_frame(names, f"tags.optuna_study = '{study}'" if study else "")
    if study:
        parents = store.runs_frame(names, f"tags.kind = 'study' and tags.optuna_study = '{study}'")
        runs = pd.concat([runs, parents], ignore_index=True).drop_duplicates("run_id")
    return runs


def metric_history(run_id: str, key: str) -> pd.DataFrame:
    points = Store().metric_history(run_id, key)
    return pd.DataFrame({"step": [s for s, _ in points], "value": [v for _, v in points]})


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_histories(path: Path, runs: pd.DataFrame, keys: list[str], ylabels: list[str], label) -> None:
    """One panel per metric, one line per run, from the metric histories MLflow holds."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.6), squeeze=False)
    for ax, key, ylabel in zip(axes[0], keys, ylabels):
        for _, row in runs.iterrows():
            hist = metric_history(row["run_id"], key)
            if not hist.empty:
                ax.plot(hist["step"], hist["value"], label=label(row))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ sections
# Keys every point of one R-D set must share, else its curves compare different experiments (first column that
# holds a value wins: the tag, then the param older runs logged).
SAME_IN_A_SET = {
    "model": ("tags.model", "params.model.name"),
    "loop.max_steps": ("params.loop.max_steps",),
    "data.source": ("params.data.source",),
    "data.root": ("params.data.root",),
    "eval.max_images": ("params.eval.max_images",),
    "test/images": ("metrics.test/images",),
}


@dataclass
class RDSet:
    """One explicit set of runs (tag rd_set) that an R-D comparison is drawn from."""

    name: str
    runs: pd.DataFrame  # every training run tagged with this rd_set
    points: pd.DataFrame  # per optimizer and lambda its latest finished run with test numbers: the curve points
    superseded: pd.DataFrame  # finished runs of an optimizer and lambda that a later run of the set replaced
    curves: dict[str, list[dict]]  # per optimizer, the points sorted by bpp
    differences: list[str]  # keys that differ across the points; any means the set is no comparison


def _first(frame: pd.DataFrame, *names: str) -> pd.Series:
    """Row by row, the first of several columns that holds a value (a tag, else the param older runs logged)."""
    out = _col(frame, names[0])
    for name in names[1:]:
        out = out.where(out.notna(), _col(frame, name))
    return out


def _value(value) -> str:
    text = _fmt(value)
    return text if text else "(not logged)"


def _ids(frame: pd.DataFrame) -> str:
    return ", ".join(frame["run_id"].str[:8])


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Phase 1 training runs that are not Optuna trials: a trial (in the demo study 30 steps on 1 image) is
    reported under its study, never next to full runs."""
    if runs.empty:
        return runs
    is_trial = _col(runs, "tags.optuna_study").notna() | (_col(runs, "tags.kind") == "study")
    return runs[(_col(runs, "tags.phase") == "phase1") & ~is_trial]


def differences(points: pd.DataFrame) -> list[str]:
    """For each key of SAME_IN_A_SET on which the points disagree: its values, each naming its runs."""
    out = []
    for key, columns in SAME_IN_A_SET.items():
        values = _first(points, *columns).map(_value)
        if values.nunique() > 1:
            ids = points["run_id"].str[:8].groupby(values)
            groups = "; ".join(f"{value} in {', '.join(group)}" for value, group in ids)
            out.append(f"`{key}` ({groups})")
    return out


def _curves(points: pd.DataFrame) -> dict[str, list[dict]]:
    """Per optimizer, one point per run (its final test evaluation), sorted by bpp, each naming its run id and
    carrying its per-image test numbers where the run logged them (test_images.json)."""
    lmbda = pd.to_numeric(_col(points, "params.lmbda"), errors="coerce")
    curves: dict[str, list[dict]] = {}
    for optim, group in points.groupby(_first(points, "tags.optim", "params.optim.name")):
        curve = [
            {
                "bpp": float(row["metrics.test/bpp_real"]),
                "psnr": float(row["metrics.test/psnr"]),
                "lmbda": float(lmbda[index]),
                "run_id": row["run_id"],
                **_per_image_numbers(row["run_id"]),
            }
            for index, row in group.iterrows()
        ]
        curves[str(optim)] = sorted(curve, key=lambda p: p["bpp"])
    return curves


def _per_image_numbers(run_id: str) -> dict:
    text = _artifact(run_id, "test_images.json")
    return json.loads(text) if text else {}


def _artifact(run_id: str, name: str) -> str | None:
    """A run's text artifact; None when it has none or its artifact store cannot be read now (the report then
    goes without it, and says so where it matters)."""
    from mlflow.exceptions import MlflowException

    try:
        return Store().artifact_text(run_id, name)
    except (MlflowException, OSError) as err:
        print(f"note: {name} of run {run_id} could not be read ({type(err).__name__}); the report goes without it")
        return None


def _latest_per_point(done: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(latest run of each optimizer and lambda, the earlier ones): a set trained again replaces its points."""
    key = [_first(done, "tags.optim", "params.optim.name"), pd.to_numeric(_col(done, "params.lmbda"), errors="coerce")]
    # by when a run finished: a run resumed to its end is newer than one started after it began
    newest_first = done.assign(_optim=key[0].values, _lmbda=key[1].values).sort_values("end_time", ascending=False)
    latest = newest_first.drop_duplicates(["_optim", "_lmbda"])
    return done.loc[latest.index], done.drop(latest.index)


def rd_sets(runs: pd.DataFrame) -> dict[str, RDSet]:
    """The R-D sets by name: only training runs tagged rd_set, so a curve never mixes unrelated runs."""
    trained = training_runs(runs)
    if trained.empty or "tags.rd_set" not in trained.columns:
        return {}
    sets = {}
    for name, group in trained.groupby("tags.rd_set"):  # runs without the tag form no group
        done = (
            (group["status"] == "FINISHED")
            & _col(group, "metrics.test/bpp_real").notna()
            & _col(group, "metrics.test/psnr").notna()
        )
        points, superseded = _latest_per_point(group[done])
        sets[str(name)] = RDSet(str(name), group, points, superseded, _curves(points), differences(points))
    return sets


def png_names(names: list[str]) -> dict[str, str]:
    """A plot file per set name: characters outside [A-Za-z0-9._-] become _, and a name taken twice gets a suffix."""
    out: dict[str, str] = {}
    for name in names:
        stem = "rd_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "set")
        file, n = f"{stem}.png", 2
        while file in out.values():
            file, n = f"{stem}_{n}.png", n + 1
        out[name] = file
    return out


def phase1_section(report: Report, runs: pd.DataFrame, sets: dict[str, RDSet]) -> None:
    trained = training_runs(runs)
    if trained.empty:
        return
    report.heading("Phase 1: codec training runs")
    trials = runs[(_col(runs, "tags.phase") == "phase1") & _col(runs, "tags.optuna_study").notna()]
    note = f" {len(trials)} Optuna trial runs are not listed here: see their study." if len(trials) else ""
    report.text(f"{len(trained)} training runs (sweep trials excluded).{note}")
    table = pd.DataFrame(
        {
            "run id": trained["run_id"].str[:8],
            "name": _col(trained, "tags.mlflow.runName"),
            "rd_set": _col(trained, "tags.rd_set"),
            "model": _first(trained, "tags.model", "params.model.name"),
            "optim": _first(trained, "tags.optim", "params.optim.name"),
            "lambda": pd.to_numeric(_col(trained, "params.lmbda"), errors="coerce"),
            "steps": pd.to_numeric(_col(trained, "params.loop.max_steps"), errors="coerce"),
            "val loss": _col(trained, "metrics.val/loss"),
            "val bpp (real)": _col(trained, "metrics.val/bpp_real"),
            "val PSNR": _col(trained, "metrics.val/psnr"),
            "test bpp (real)": _col(trained, "metrics.test/bpp_real"),
            "test bpp (estimate)": _col(trained, "metrics.test/bpp_loss"),
            "test PSNR": _col(trained, "metrics.test/psnr"),
            "test MS-SSIM": _col(trained, "metrics.test/ms_ssim"),
            "test images": _col(trained, "metrics.test/images"),
            "status": trained["status"],
        }
    ).sort_values(["rd_set", "optim", "lambda"], na_position="last")
    report.table(table)
    loose = trained[_col(trained, "tags.rd_set").isna()]
    if not loose.empty:
        report.text(
            f"{len(loose)} runs have no rd_set and are in no R-D curve: {_ids(loose)}. A curve is one "
            "explicit set of runs with the same model, steps and test set: train each of its runs with "
            "`rd_set=<name>` on the command line (e.g. `python -m phase1.train optim=adam lmbda=0.0035 "
            "rd_set=<name>`)."
        )
    rd_section(report, sets)
    task_weight_section(report, trained)


def rd_curves(runs: pd.DataFrame) -> dict[str, dict[str, list[dict]]]:
    """Per rd_set, per optimizer, the curve points (see rd_sets)."""
    return {name: s.curves for name, s in rd_sets(runs).items()}


def _describe(points: pd.DataFrame) -> str:
    """What the points of a comparable set share (the keys of SAME_IN_A_SET), read off its first run."""
    v = {key: _value(_first(points, *columns).iloc[0]) for key, columns in SAME_IN_A_SET.items()}
    unset = {None, "None", "null", ""}
    where = [f"{key} {v[key]}" for key in ("data.root", "eval.max_images") if v[key] not in unset]
    where.append(f"{v['test/images']} images")
    return f"model {v['model']}, {v['loop.max_steps']} steps, test set {v['data.source']} ({', '.join(where)})"


def rd_section(report: Report, sets: dict[str, RDSet]) -> None:
    files = png_names(sorted(sets))
    for name in sorted(sets):
        rd_set = sets[name]
        report.heading(f"Phase 1: R-D set {name}")
        counted = pd.concat([rd_set.points["run_id"], rd_set.superseded["run_id"]])
        left_out = rd_set.runs[~rd_set.runs["run_id"].isin(counted)]
        if not left_out.empty:
            report.text(f"Not finished or without test numbers, so not in the curves: {_ids(left_out)}.")
        if not rd_set.superseded.empty:
            report.text(
                f"Replaced by a later run of the same optimizer and lambda, so not in the curves: "
                f"{_ids(rd_set.superseded)}."
            )
        if rd_set.points.empty:
            report.text("No finished run with test numbers in this set yet.")
        elif rd_set.differences:
            report.text(
                f"Not drawn as a comparison: its runs differ in {'; '.join(rd_set.differences)}. Give runs "
                "of different experiments different rd_set names."
            )
        else:
            rd_set_plot(report, rd_set, files[name])


def rd_set_plot(report: Report, rd_set: RDSet, file: str) -> None:
    """The set's curves (plot and points table, each point naming its run) and the BD-rate of Balanced vs Adam."""
    from phase1 import rd

    report.text(f"{len(rd_set.points)} runs, all with {_describe(rd_set.points)}.")
    rd.plot_rd(rd_set.curves, report.folder / file, title=f"R-D set {rd_set.name} (test images, real bitstreams)")
    report.figure(file, f"R-D set {rd_set.name}: PSNR vs real bpp, one point per run, labelled with lambda")
    report.table(
        pd.DataFrame(
            [
                {
                    "rd_set": rd_set.name,
                    "optim": optim,
                    "lambda": p["lmbda"],
                    "test bpp (real)": p["bpp"],
                    "test PSNR": p["psnr"],
                    "run id": p["run_id"][:8],
                }
                for optim, curve in rd_set.curves.items()
                for p in curve
            ]
        )
    )
    c = comparison(rd_set)
    if "error" in c:
        report.text(
            f"BD-rate of Balanced vs Adam not computed: {c['error']}" + (f" (runs: {c['runs']})." if c["runs"] else ".")
        )
        return
    report.table(
        pd.DataFrame(
            [
                {
                    "rd_set": rd_set.name,
                    "anchor": "adam",
                    "test": "balanced",
                    "BD-rate (%)": c["bd_rate"],
                    "95 % interval (%)": c["interval"] or c["note"],
                    "BD-PSNR (dB)": c["bd_psnr"],
                    "PSNR overlap (dB)": f"{c['low']:.2f}-{c['high']:.2f} ({c['fraction']:.0%} of Adam's range)",
                    "runs": c["runs"],
                }
            ]
        )
    )


def comparison(rd_set: RDSet) -> dict:
    """Balanced vs Adam on one set: BD-rate and BD-PSNR over the quality range both reach (mean over the test
    images of per-image PSNR, CompressAI's definition), and a paired bootstrap interval where every point has
    per-image numbers on enough images; else why there is none. {"error": why, "runs": ...} when no BD-rate."""
    from phase1 import rd

    if "adam" not in rd_set.curves or "balanced" not in rd_set.curves:
        return {"error": f"the set needs both adam and balanced runs (it has {sorted(rd_set.curves)})", "runs": ""}
    anchor, test = rd_set.curves["adam"], rd_set.curves["balanced"]
    ids = ", ".join(p["run_id"][:8] for p in anchor + test)
    try:
        low, high, fraction = rd.quality_overlap(anchor, test)
        result = {"bd_rate": rd.bd_rate(anchor, test), "bd_psnr": rd.bd_psnr(anchor, test), "low": low,
                  "high": high, "fraction": fraction, "runs": ids, "interval": None}  # fmt: skip
    except ValueError as err:
        return {"error": str(err), "runs": ids}
    images = pd.to_numeric(_col(rd_set.points, "metrics.test/images"), errors="coerce").max()
    if all("bpp_per_image" in p for p in anchor + test):
        try:
            boot = rd.bd_rate_bootstrap(anchor, test)
        except ValueError as err:  # e.g. runs measured on different test images: no paired resampling
            result["note"] = f"no interval: {err}"
            return result
        result["note"] = boot["note"]
        if boot["ci_low"] is not None:
            result["interval"] = (
                f"{boot['ci_low']:.1f} to {boot['ci_high']:.1f} ({boot['n_images']} images paired, "
                f"{boot['samples']} resamples, {boot['non_monotone']} of them non-monotone)"
            )
    elif images == images and images < rd.MIN_IMAGES_FOR_INTERVAL:
        result["note"] = (
            f"too few images for an interval ({images:.0f} images; needs at least {rd.MIN_IMAGES_FOR_INTERVAL})"
        )
    else:
        result["note"] = "no interval: the runs logged no per-image test numbers (test_images.json)"
    return result


def task_weight_section(report: Report, trained: pd.DataFrame) -> None:
    balanced = trained[_first(trained, "tags.optim", "params.optim.name") == "balanced"]
    if balanced.empty:
        return
    keys, labels = ["train/task_weight_distortion"], ["task weight of distortion"]
    if _col(balanced, "metrics.train/effective_lambda").notna().any():  # older runs did not log it
        keys, labels = [*keys, "train/effective_lambda"], [*labels, "effective lambda"]
    plot_histories(
        report.folder / "task_weights.png",
        balanced,
        keys,
        labels,
        lambda row: f"{row['run_id'][:8]} {row.get('tags.rd_set') or ''} lambda={row.get('params.lmbda')}",
    )
    report.heading("Phase 1: Balanced task weights")
    report.figure("task_weights.png", "FAMO weight of the distortion task over training (rate = 1 - it)")


# Params that differ from trial to trial without being searched (run names, folders).
RUN_SPECIFIC = ("params.logger.", "params.paths.", "params.checkpoint.", "params.hydra.")


def searched_params(parent: pd.Series | None, trials: pd.DataFrame) -> list[str]:
    """The study's searched parameters as trial columns: from the search space sweeps/run.py logs on the parent
    run (param study.search_space), else the params whose values differ across the trials."""
    space = parent.get("params.study.search_space") if parent is not None else None
    if isinstance(space, str):
        try:
            return [f"params.{key}" for key in ast.literal_eval(space)]
        except (ValueError, SyntaxError):  # cut off at MLflow's param length: fall back to what varies
            pass
    return [
        c
        for c in trials.columns
        if c.startswith("params.") and not c.startswith(RUN_SPECIFIC) and trials[c].map(_value).nunique() > 1
    ]


def objective_column(objective: str | None, trials: pd.DataFrame) -> str | None:
    """The trial metric holding the study's objective: train() returns final/<key>, the value of <key> at the
    last evaluation, which is the latest value MLflow holds for <key>."""
    if not objective:
        return None
    for column in (f"metrics.{objective}", f"metrics.{objective.removeprefix('final/')}"):
        if column in trials.columns:
            return column
    return None


def study_section(report: Report, runs: pd.DataFrame, storage: str | None) -> None:
    studies = runs[_col(runs, "tags.kind") == "study"]
    trial_runs = runs[_col(runs, "tags.optuna_study").notna() & (_col(runs, "tags.kind") != "study")]
    # A study is reported even when its parent run is not in the selection, so no trial goes unreported.
    names = dict.fromkeys([*_col(studies, "tags.optuna_study").dropna(), *_col(trial_runs, "tags.optuna_study")])
    for name in names:
        parents = studies[_col(studies, "tags.optuna_study") == name]
        parent = parents.iloc[0] if not parents.empty else None
        trials = trial_runs[_col(trial_runs, "tags.optuna_study") == name]
        report.heading(f"Optuna study {name}")
        if parent is None:
            report.text(f"No parent run of study {name} in this selection; {len(trials)} trial runs.")
        else:
            best_value = _fmt(parent.get("metrics.study/best_value"))
            best = (
                f"best trial {_fmt(parent.get('tags.best_trial')) or 'n/a'} with objective {best_value}"
                if best_value
                else "no best trial recorded yet"
            )
            report.text(f"Parent run {parent['run_id']}: {len(trials)} trial runs; {best}.")
        if not trials.empty:
            report.table(trials_table(parent, trials))
        optuna_plots(report, name, storage)


def trials_table(parent: pd.Series | None, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its searched parameters and its objective, not every parameter of the run."""
    objective = parent.get("params.study.objective") if parent is not None else None
    table = pd.DataFrame(
        {
            "trial": pd.to_numeric(_col(trials, "tags.optuna_trial"), errors="coerce"),
            "run id": trials["run_id"].str[:8],
            "state": _col(trials, "tags.optuna_state"),
        }
    )
    for column in searched_params(parent, trials):
        table[column.removeprefix("params.")] = _col(trials, column)
    column = objective_column(objective if isinstance(objective, str) else None, trials)
    if column:
        table[f"objective {objective}" + ("" if column == f"metrics.{objective}" else f" ({column[8:]})")] = trials[
            column
        ]
    return table.sort_values("trial")


def optuna_plots(report: Report, name: str, storage: str | None) -> None:
    """History and parameter importance from the Optuna storage itself (matplotlib, no plotly)."""
    import optuna

    from sweeps.run import open_storage

    urls = (
        [storage]
        if storage
        else [f"sqlite:///{REPO_ROOT / 'optuna.db'}", f"journal:{REPO_ROOT / 'sweeps' / f'{name}.journal.log'}"]
    )
    for url in urls:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            continue
        if url.startswith("journal:") and not Path(url.removeprefix("journal:")).exists():
            continue
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
        except KeyError:  # this storage has no study of that name; the next may
            continue
        plt = _pyplot()
        from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

        _draw_quietly(plot_optimization_history, study)
        plt.gcf().set_size_inches(6, 3.6)
        plt.tight_layout()
        plt.savefig(report.folder / f"{name}_history.png", dpi=110)
        plt.close("all")
        report.figure(f"{name}_history.png", f"Optimisation history of {name}")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 3 and len(study.best_params) > 1:
            importance = optuna.importance.get_param_importances(study)
            report.table(pd.DataFrame({"parameter": list(importance), "importance": list(importance.values())}))
            _draw_quietly(plot_param_importances, study)
            plt.gcf().set_size_inches(6, 3)
            plt.tight_layout()
            plt.savefig(report.folder / f"{name}_importance.png", dpi=110)
            plt.close("all")
            report.figure(f"{name}_importance.png", f"Parameter importance in {name} (fANOVA)")
        return
    report.text(f"(no Optuna storage holding study {name} was found; pass --storage)")


def _draw_quietly(plot, study) -> None:
    import optuna

    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental on every call: nothing to act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plot(study)


def phase2_section(report: Report, runs: pd.DataFrame) -> None:
    lm = runs[_col(runs, "tags.phase") == "phase2"]
    if lm.empty:
        return
    report.heading("Phase 2: language model runs")
    report.table(
        pd.DataFrame(
            {
                "run id": lm["run_id"].str[:8],
                "model": _col(lm, "tags.model"),
                "val loss": _col(lm, "metrics.val/loss"),
                "val perplexity": _col(lm, "metrics.val/perplexity"),
                "val bits/byte": _col(lm, "metrics.val/bits_per_byte"),
                "test bits/byte": _col(lm, "metrics.test/bits_per_byte"),
                "tokens/s": _col(lm, "metrics.train/items_per_s"),
                "status": lm["status"],
            }
        )
    )
    plot_histories(
        report.folder / "phase2_curves.png",
        lm,
        ["train/loss", "val/loss"],
        ["train loss", "val loss"],
        lambda row: f"{row['run_id'][:8]} {row.get('tags.model', '')}",
    )
    report.figure("phase2_curves.png", "Phase 2 learning curves (from the logged metrics)")
    diag_keys = ["diag/gamma_mean", "diag/snr_mean", "diag/lyapunov_stable_ratio", "diag/fast_weight_energy"]
    present = [k for k in diag_keys if f"metrics.{k}" in lm.columns]
    if present:
        table = lm[["run_id", *(f"metrics.{k}" for k in present)]].copy()
        table["run_id"] = table["run_id"].str[:8]
        report.text("Last logged diagnostics per run:")
        report.table(table)


def summary_section(report: Report, runs: pd.DataFrame, sets: dict[str, RDSet]) -> None:
    """What was compared and what came out, one bullet per R-D set, study and the latest Phase 2 run, each
    number naming its run; the sections below hold the details."""
    lines = [*_rd_summaries(sets), *_study_summaries(runs)]
    phase2, sample = _phase2_summary(runs)
    lines += phase2
    if not lines:
        return
    report.heading("Summary")
    report.text("- " + "\n- ".join(lines))
    if sample:
        report.text("\n".join(f"> {line}" for line in sample.rstrip("\n").splitlines()))


def _rd_summaries(sets: dict[str, RDSet]) -> list[str]:
    out = []
    for name, rd_set in sorted(sets.items()):
        if rd_set.points.empty or rd_set.differences:
            continue
        sizes = ", ".join(f"{optim} at {len(curve)} lambdas" for optim, curve in sorted(rd_set.curves.items()))
        origin = _origin(rd_set.points)
        line = f"**Phase 1, R-D set `{name}`**: {sizes}; {_describe(rd_set.points)}{origin}."
        c = comparison(rd_set)
        if "error" in c:
            line += f" No BD-rate: {c['error']}."
        else:
            line += (
                f" BD-rate of Balanced vs Adam **{c['bd_rate']:+.1f} %** (BD-PSNR {c['bd_psnr']:+.2f} dB) over "
                f"{c['low']:.2f}-{c['high']:.2f} dB; {c['interval'] or c['note']}. Runs: {c['runs']}."
            )
        out.append(line)
    return out


def _study_summaries(runs: pd.DataFrame) -> list[str]:
    out = []
    studies = runs[_col(runs, "tags.kind") == "study"]
    for _, parent in studies.iterrows():
        name = parent.get("tags.optuna_study")
        trials = runs[_col(runs, "tags.mlflow.parentRunId") == parent["run_id"]]  # this study's, not a namesake's
        objective = parent.get("params.study.objective") or "the objective"
        best = trials[_col(trials, "tags.optuna_trial").astype(str) == str(parent.get("tags.best_trial"))]
        line = f"**Optuna study `{name}`**: {len(trials)} trials"
        if best.empty or not _fmt(parent.get("metrics.study/best_value")):
            out.append(line + "; no best trial yet.")
            continue
        row = best.iloc[0]
        params = ", ".join(f"{c.removeprefix('params.')}={row.get(c)}" for c in searched_params(parent, trials))
        out.append(
            f"{line}; best {objective} {_fmt(parent.get('metrics.study/best_value'))} with {params} "
            f"(trial {parent.get('tags.best_trial')}, run {row['run_id'][:8]})."
        )
    return out


def _phase2_summary(runs: pd.DataFrame) -> tuple[list[str], str | None]:
    """The latest finished Phase 2 run: its test and validation bits/byte, where it started, and its sample."""
    if runs.empty:
        return [], None
    lm = runs[(_col(runs, "tags.phase") == "phase2") & (runs["status"] == "FINISHED")]
    lm = lm[_col(lm, "metrics.test/bits_per_byte").notna() & _col(lm, "tags.optuna_study").isna()]
    if lm.empty:
        return [], None
    row = lm.sort_values("end_time").iloc[-1]
    steps = Store().metric_history(row["run_id"], "test/bits_per_byte")[-1][0]  # logged once, at the last step
    line = (
        f"**Phase 2** (latest run {row['run_id'][:8]}, model {row.get('tags.model')}, {steps} steps"
        f"{_origin(lm.loc[[row.name]])}): test **{row['metrics.test/bits_per_byte']:.3f} bits/byte** (validation "
        f"{_fmt(row.get('metrics.val/bits_per_byte'))})."
    )
    sample = _artifact(row["run_id"], "sample.txt")
    if sample:
        line += f" Sample of its final weights (run {row['run_id'][:8]}):"
    return [line], sample


def _origin(points: pd.DataFrame) -> str:
    """ ", fine-tuned from <file> (released ...)" when every run started from the same weights (init_from, and its
    sha256 as the run recorded it); the release's numbers come from the manifest beside the file when it still
    lists those very weights (common/release.py)."""
    from common.release import read_manifest

    files, hashes = _col(points, "params.init_from"), _col(points, "tags.init_from_sha256")
    if files.isna().any() or files.nunique() != 1 or files.iloc[0] == "None":
        return ""
    path = Path(files.iloc[0])
    text = f", fine-tuned from `{_relative(path)}`"
    if hashes.isna().any() or hashes.nunique() != 1:
        return text
    try:
        entry = read_manifest(path.parent)["files"].get(path.name)
    except ValueError:  # no manifest beside it (or not one): the file alone is named
        return text
    if not isinstance(entry, dict) or entry.get("sha256") != hashes.iloc[0]:
        return text + " (not the weights its manifest lists now)"
    metrics = entry.get("metrics", {})
    shown = ", ".join(
        f"{key} {metrics[key]:.4g}" for key in ("test/bpp_real", "test/psnr", "test/bits_per_byte") if key in metrics
    )
    run_id = str(entry.get("run", {}).get("mlflow_run_id"))[:8]
    return text + f" (released after {entry.get('steps')} steps on {entry.get('device')}: {shown}; run {run_id})"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def build(
    experiment: str | None = None, study: str | None = None, storage: str | None = None, out_root: Path = OUT_ROOT
) -> Path:
    for option, value in (("--experiment", experiment), ("--study", study)):
        if value is not None and (not re.fullmatch(r"[\w.-]+", value) or value in (".", "..")):
            raise ValueError(f"{option} {value!r} must be a plain name (letters, digits, '_', '.', '-')")
    name = study or experiment or "all"
    uri = default_tracking_uri()
    if (database := sqlite_file(uri)) is not None and not database.exists():  # a report never makes a store
        raise ValueError(f"there is no MLflow store at {uri}: train something first, or set MLFLOW_TRACKING_URI")
    runs = load_runs(experiment, study)
    if runs.empty and (experiment or study):
        what = f"study {study!r}" if study else f"experiment {experiment!r}"
        raise ValueError(f"the MLflow store {default_tracking_uri()} holds no runs of {what}: check the name")
    report = Report(title=f"Report: {name}", folder=out_root / name)
    report.text(
        f"Generated from the MLflow store {default_tracking_uri()} ({len(runs)} runs). "
        "Run ids (first 8 characters) name the run each number comes from."
    )
    if runs.empty:
        report.text(
            "The store holds no runs for this selection yet: train something first "
            "(e.g. `make demo` or `./run_balanced.sh`)."
        )
        return report.write()
    sets = rd_sets(runs)  # once: its points' per-image numbers are downloaded from the store
    summary_section(report, runs, sets)
    phase1_section(report, runs, sets)
    study_section(report, runs, storage)
    phase2_section(report, runs)
    return report.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment")
    parser.add_argument("--study")
    parser.add_argument("--storage", help="Optuna storage URL for study plots (default: the sweep defaults)")
    args = parser.parse_args(argv)
    # the report reads a few small artifacts per run: MLflow's progress bar for each would bury the report's line
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    def body() -> None:
        path = build(args.experiment, args.study, args.storage)
        print(f"report: {path}  (HTML: {path.with_suffix('.html')})")

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
