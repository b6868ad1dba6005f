"""Reports generated from MLflow runs: Markdown + HTML with PNG plots, every number tagged with its run id.

    python -m reports.build                              # everything in the store -> reports/out/all/
    python -m reports.build --study balanced_gamma_wlr   # one Optuna study
    python -m reports.build --experiment phase1          # one MLflow experiment

Sections (each only when its runs exist): Phase 1 runs, R-D curves per optimizer with the BD-rate of
Balanced vs Adam, task-weight trajectories, Optuna studies (best trial, history, parameter importance),
Phase 2 learning curves and diagnostics.
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from common.tracking import REPO_ROOT, default_tracking_uri

OUT_ROOT = REPO_ROOT / "reports" / "out"


@dataclass
class Report:
    title: str
    folder: Path
    blocks: list[str] = field(default_factory=list)  # Markdown blocks

    def heading(self, text: str) -> None:
        self.blocks.append(f"## {text}")

    def text(self, text: str) -> None:
        self.blocks.append(text)

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(_markdown_table(frame))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(f"![{caption}]({name})\n\n*{caption}*")

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
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
            parts.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        else:
            parts.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


# ------------------------------------------------------------------------------------------------ data
def load_runs(experiment: str | None = None, study: str | None = None) -> pd.DataFrame:
    """All runs (or one experiment's, or one study's trials) as a DataFrame from mlflow.search_runs."""
    import mlflow

    mlflow.set_tracking_uri(default_tracking_uri())
    names = [e.name for e in mlflow.search_experiments()]
    if experiment:
        if experiment not in names:
            return pd.DataFrame()
        names = [experiment]
    if not names:
        return pd.DataFrame()
    filt = f"tags.optuna_study = '{study}'" if study else ""
    runs = mlflow.search_runs(experiment_names=names, filter_string=filt)
    if study:
        parent_filter = f"tags.kind = 'study' and tags.optuna_study = '{study}'"
        parents = mlflow.search_runs(experiment_names=names, filter_string=parent_filter)
        runs = pd.concat([runs, parents], ignore_index=True).drop_duplicates("run_id")
    return runs


def metric_history(run_id: str, key: str) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    points = MlflowClient(default_tracking_uri()).get_metric_history(run_id, key)
    return pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]}).sort_values("step")


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
def phase1_section(report: Report, runs: pd.DataFrame) -> None:
    trained = runs[(_col(runs, "tags.phase") == "phase1")]
    if trained.empty:
        return
    report.heading("Phase 1: codec training runs")
    table = pd.DataFrame({
        "run id": trained["run_id"].str[:8],
        "name": _col(trained, "tags.mlflow.runName"),
        "optim": _col(trained, "params.optim.name"),
        "lambda": pd.to_numeric(_col(trained, "params.lmbda"), errors="coerce"),
        "steps": pd.to_numeric(_col(trained, "params.loop.max_steps"), errors="coerce"),
        "test bpp (real)": _col(trained, "metrics.test/bpp_real"),
        "test bpp (estimate)": _col(trained, "metrics.test/bpp_loss"),
        "test PSNR": _col(trained, "metrics.test/psnr"),
        "test MS-SSIM": _col(trained, "metrics.test/ms_ssim"),
        "status": trained["status"],
    }).sort_values(["optim", "lambda"])
    report.table(table)
    rd_section(report, trained)
    task_weight_section(report, trained)


def rd_curves(trained: pd.DataFrame) -> dict[str, list[dict]]:
    """Per optimizer, one point per finished run (its last evaluation), sorted by bpp, with run ids."""
    curves: dict[str, list[dict]] = {}
    done = trained[(trained["status"] == "FINISHED") & _col(trained, "metrics.test/bpp_real").notna()]
    for optim, group in done.groupby(_col(done, "params.optim.name")):
        points = [{"bpp": row["metrics.test/bpp_real"], "psnr": row["metrics.test/psnr"],
                   "lmbda": float(row.get("params.lmbda", "nan")), "run_id": row["run_id"]}
                  for _, row in group.iterrows()]
        curves[str(optim)] = sorted(points, key=lambda p: p["bpp"])
    return curves


def rd_section(report: Report, trained: pd.DataFrame) -> None:
    from phase1 import rd

    curves = rd_curves(trained)
    if not curves:
        return
    report.heading("Phase 1: rate-distortion")
    rd.plot_rd(curves, report.folder / "rd_curves.png", title="R-D on the test images (real bitstreams)")
    report.figure("rd_curves.png", "PSNR vs real bpp, one point per run, labelled with lambda")
    if "adam" in curves and "balanced" in curves:
        anchor, test = curves["adam"], curves["balanced"]
        ids = ", ".join(p["run_id"][:8] for p in anchor + test)
        try:
            low, high, frac = rd.quality_overlap(anchor, test)
            value = rd.bd_rate(anchor, test)
            report.table(pd.DataFrame([{
                "anchor": "adam", "test": "balanced", "BD-rate (%)": value, "BD-PSNR (dB)": rd.bd_psnr(anchor, test),
                "PSNR overlap (dB)": f"{low:.2f}-{high:.2f} ({frac:.0%} of Adam's range)", "runs": ids}]))
        except ValueError as err:
            report.text(f"BD-rate of Balanced vs Adam not computed: {err} (runs: {ids}).")


def task_weight_section(report: Report, trained: pd.DataFrame) -> None:
    balanced = trained[_col(trained, "params.optim.name") == "balanced"]
    if balanced.empty:
        return
    plot_histories(report.folder / "task_weights.png", balanced, ["train/task_weight_distortion"],
                   ["task weight of distortion"], lambda row: f"{row['run_id'][:8]} lambda={row.get('params.lmbda')}")
    report.heading("Phase 1: Balanced task weights")
    report.figure("task_weights.png", "FAMO weight of the distortion task over training (rate = 1 - it)")


def study_section(report: Report, runs: pd.DataFrame, storage: str | None) -> None:
    studies = runs[_col(runs, "tags.kind") == "study"]
    for _, parent in studies.iterrows():
        name = parent["tags.optuna_study"]
        trials = runs[(_col(runs, "tags.optuna_study") == name) & (_col(runs, "tags.kind") != "study")]
        report.heading(f"Optuna study {name}")
        best_value = _fmt(parent.get("metrics.study/best_value"))
        report.text(f"Parent run {parent['run_id']}: {len(trials)} trial runs; best trial "
                    f"{parent.get('tags.best_trial', 'n/a')} with objective {best_value}.")
        if not trials.empty:
            params = [c for c in trials.columns if c.startswith("params.optim.")]
            table = trials[["run_id", "tags.optuna_trial", *params, "metrics.test/loss"]].copy()
            table["run_id"] = table["run_id"].str[:8]
            table["tags.optuna_state"] = _col(trials, "tags.optuna_state")
            report.table(table.sort_values("metrics.test/loss"))
        optuna_plots(report, name, storage)


def optuna_plots(report: Report, name: str, storage: str | None) -> None:
    """History and parameter importance from the Optuna storage itself (matplotlib, no plotly)."""
    import optuna

    from sweeps.run import open_storage

    urls = [storage] if storage else [f"sqlite:///{REPO_ROOT / 'optuna.db'}",
                                        f"journal:{REPO_ROOT / 'sweeps' / f'{name}.journal.log'}"]
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

        plot_optimization_history(study)
        plt.gcf().set_size_inches(6, 3.6)
        plt.tight_layout()
        plt.savefig(report.folder / f"{name}_history.png", dpi=110)
        plt.close("all")
        report.figure(f"{name}_history.png", f"Optimisation history of {name}")
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 3 and len(study.best_params) > 1:
            importance = optuna.importance.get_param_importances(study)
            report.table(pd.DataFrame({"parameter": list(importance), "importance": list(importance.values())}))
            plot_param_importances(study)
            plt.gcf().set_size_inches(6, 3)
            plt.tight_layout()
            plt.savefig(report.folder / f"{name}_importance.png", dpi=110)
            plt.close("all")
            report.figure(f"{name}_importance.png", f"Parameter importance in {name} (fANOVA)")
        return
    report.text(f"(no Optuna storage holding study {name} was found; pass --storage)")


def phase2_section(report: Report, runs: pd.DataFrame) -> None:
    lm = runs[_col(runs, "tags.phase") == "phase2"]
    if lm.empty:
        return
    report.heading("Phase 2: language model runs")
    report.table(pd.DataFrame({
        "run id": lm["run_id"].str[:8],
        "model": _col(lm, "tags.model"),
        "val loss": _col(lm, "metrics.val/loss"),
        "val perplexity": _col(lm, "metrics.val/perplexity"),
        "val bits/byte": _col(lm, "metrics.val/bits_per_byte"),
        "tokens/s": _col(lm, "metrics.train/items_per_s"),
        "status": lm["status"],
    }))
    plot_histories(report.folder / "phase2_curves.png", lm, ["train/loss", "val/loss"], ["train loss", "val loss"],
                   lambda row: f"{row['run_id'][:8]} {row.get('tags.model', '')}")
    report.figure("phase2_curves.png", "Phase 2 learning curves (from the logged metrics)")
    diag_keys = ["diag/gamma_mean", "diag/snr_mean", "diag/lyapunov_stable_ratio", "diag/fast_weight_energy"]
    present = [k for k in diag_keys if f"metrics.{k}" in lm.columns]
    if present:
        table = lm[["run_id", *(f"metrics.{k}" for k in present)]].copy()
        table["run_id"] = table["run_id"].str[:8]
        report.text("Last logged diagnostics per run:")
        report.table(table)


def build(experiment: str | None = None, study: str | None = None, storage: str | None = None,
          out_root: Path = OUT_ROOT) -> Path:
    name = study or experiment or "all"
    report = Report(title=f"Report: {name}", folder=out_root / name)
    runs = load_runs(experiment, study)
    report.text(f"Generated from the MLflow store {default_tracking_uri()} ({len(runs)} runs). "
                "Run ids (first 8 characters) name the run each number comes from.")
    if runs.empty:
        report.text("The store holds no runs for this selection yet: train something first "
                    "(e.g. `make demo` or `./run_balanced.sh`).")
        return report.write()
    phase1_section(report, runs)
    study_section(report, runs, storage)
    phase2_section(report, runs)
    return report.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment")
    parser.add_argument("--study")
    parser.add_argument("--storage", help="Optuna storage URL for study plots (default: the sweep defaults)")
    args = parser.parse_args(argv)
    path = build(args.experiment, args.study, args.storage)
    print(f"report: {path}  (HTML: {path.with_suffix('.html')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
