"""Reports built from MLflow runs: numbers in the report equal those computed directly from the runs, and an R-D
curve holds only the runs of its own rd_set (never sweep trials, never runs without rd_set)."""

from __future__ import annotations

import re

import pytest

from common.tracking import MLflowLogger
from phase1 import rd
from reports.build import build, load_runs, rd_curves, rd_sets
from tests.servers import CHROMIUM, chromium

# Four lambdas per optimizer; Balanced needs ~10 % fewer bits at each quality level.
ADAM = [(0.0035, 0.20, 28.0), (0.0067, 0.33, 30.1), (0.013, 0.52, 32.0), (0.025, 0.80, 33.9)]


def _log_rd_run(
    optim: str,
    lmbda: float,
    bpp: float,
    psnr: float,
    rd_set: str | None = None,
    steps: int = 100,
    tags: dict | None = None,
    params: dict | None = None,
    per_image: dict | None = None,
) -> str:
    """A finished Phase 1 run as train() logs it: tags, the flattened config, val/* and the final test/* (with
    `per_image`, the means of its lists and the test_images.json artifact)."""
    run_tags = {
        "phase": "phase1",
        "model": "tiny",
        "optim": optim,
        **({"rd_set": rd_set} if rd_set else {}),
        **(tags or {}),
    }
    logger = MLflowLogger("phase1", run_name=f"{optim}-{lmbda}", tags=run_tags)
    logger.log_params(
        {
            "optim": {"name": optim},
            "lmbda": lmbda,
            "loop": {"max_steps": steps},
            "rd_set": rd_set,
            "model": {"name": "tiny"},
            "data": {"source": "builtin", "root": None},
            "eval": {"max_images": None},
            **(params or {}),
        }
    )
    logger.log_metrics({"val/loss": 1.0 + lmbda, "val/psnr": psnr - 0.5, "val/bpp_real": bpp * 1.01}, step=steps)
    images = 3.0
    if per_image is not None:
        bpp, psnr = (sum(per_image[k]) / len(per_image[k]) for k in ("bpp_per_image", "psnr_per_image"))
        images = float(len(per_image["bpp_per_image"]))
        logger.log_dict(per_image, "test_images.json")
    logger.log_metrics(
        {"test/bpp_real": bpp, "test/psnr": psnr, "test/bpp_loss": bpp * 0.98, "test/images": images}, step=steps
    )
    if optim == "balanced":
        for step in (10, 50, 100):
            logger.log_metrics({"train/task_weight_distortion": 0.5 + step / 1000}, step=step)
    logger.close()
    return logger.run_id


def _sections(text: str) -> dict[str, str]:
    """The report's Markdown by heading: {heading: text up to the next heading}."""
    return {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}


def _table_row(text: str, prefix: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_empty_store_says_so(mlflow_store, tmp_path):
    text = build(out_root=tmp_path).read_text()
    assert "holds no runs" in text


def test_a_report_with_plots_creates_its_own_folder(mlflow_store, tmp_path):
    logger = MLflowLogger("phase2", run_name="lm", tags={"phase": "phase2", "model": "debug"})
    for step in (10, 20):
        logger.log_metrics({"train/loss": 3.0 - step / 100, "val/loss": 3.1 - step / 100}, step=step)
    logger.close()
    report = build(experiment="phase2", out_root=tmp_path / "not" / "yet")  # the curves are saved first
    assert report.parent == tmp_path / "not" / "yet" / "phase2"
    assert (report.parent / "phase2_curves.png").stat().st_size > 0 and "phase2_curves.png" in report.read_text()


def test_rd_report_matches_direct_computation(mlflow_store, tmp_path):
    import mlflow

    ids = [_log_rd_run("adam", lm, b, p, rd_set="main") for lm, b, p in ADAM]
    ids += [_log_rd_run("balanced", lm, 0.9 * b, p, rd_set="main") for lm, b, p in ADAM]
    report = build(experiment="phase1", out_root=tmp_path)
    text = report.read_text()
    html = report.with_suffix(".html").read_text()

    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(experiment_names=["phase1"])
    curves = {
        o: [
            {"bpp": r["metrics.test/bpp_real"], "psnr": r["metrics.test/psnr"]}
            for _, r in runs[runs["params.optim.name"] == o].iterrows()
        ]
        for o in ("adam", "balanced")
    }
    expected = rd.bd_rate(curves["adam"], curves["balanced"])
    assert expected == pytest.approx(-10.0, abs=1e-6)
    row = _table_row(text, "| main | adam | balanced |")
    assert float(row[3]) == pytest.approx(expected, abs=1e-3)
    for run_id in ids:  # every number names the run it came from
        assert run_id[:8] in text
    for png in ("rd_main.png", "task_weights.png"):
        assert (report.parent / png).stat().st_size > 5000 and png in html


def test_each_curve_holds_only_its_own_rd_set(mlflow_store, tmp_path):
    """One store: a sweep whose trials even carry rd_set=A, sets A and B (comparable), set C (mixed max_steps) and
    runs without rd_set. Each curve holds exactly its set's runs; C is reported as not comparable."""
    parent = MLflowLogger("phase1", run_name="study:sw", tags={"kind": "study", "optuna_study": "sw"})
    parent.log_params(
        {
            "study": {
                "objective": "final/val/loss",
                "search_space": str(
                    {
                        "optim.gamma": {"type": "categorical", "choices": [0.001, 0.01]},
                        "optim.w_lr": {"type": "categorical", "choices": [0.025, 0.05]},
                    }
                ),
            }
        }
    )
    trials = [
        _log_rd_run(
            "balanced",
            0.013,
            0.5 + 0.01 * n,
            31.0 + n,
            rd_set="A",
            steps=30,
            tags={
                "optuna_study": "sw",
                "optuna_trial": n,
                "optuna_state": "COMPLETE",
                "mlflow.parentRunId": parent.run_id,
            },
            params={"optim": {"name": "balanced", "gamma": [0.001, 0.01, 0.01][n], "w_lr": [0.025, 0.025, 0.05][n]}},
        )
        for n in range(3)
    ]
    parent.close()
    ids = {
        "A": {
            "adam": [_log_rd_run("adam", lm, b, p, rd_set="A") for lm, b, p in ADAM],
            "balanced": [_log_rd_run("balanced", lm, 0.9 * b, p, rd_set="A") for lm, b, p in ADAM],
        },
        "B": {
            "adam": [_log_rd_run("adam", lm, 1.1 * b, p + 1, rd_set="B") for lm, b, p in ADAM],
            "balanced": [_log_rd_run("balanced", lm, 0.88 * b, p + 1, rd_set="B") for lm, b, p in ADAM],
        },
        "C": {
            "adam": [_log_rd_run("adam", lm, b, p, rd_set="C", steps=100) for lm, b, p in ADAM],
            "balanced": [_log_rd_run("balanced", lm, b, p, rd_set="C", steps=200) for lm, b, p in ADAM],
        },
    }
    loose = [_log_rd_run("adam", lm, b, p) for lm, b, p in ADAM[:2]]

    curves = rd_curves(load_runs())
    assert sorted(curves) == ["A", "B", "C"]
    for name in ("A", "B"):
        assert {o: sorted(p["run_id"] for p in curve) for o, curve in curves[name].items()} == {
            o: sorted(run_ids) for o, run_ids in ids[name].items()
        }
    in_curves = {p["run_id"] for sets in curves.values() for curve in sets.values() for p in curve}
    assert not in_curves & {*trials, *loose}
    differences = rd_sets(load_runs())["C"].differences
    assert len(differences) == 1 and differences[0].startswith("`loop.max_steps` (100 in ")
    assert all(run_id[:8] in differences[0] for run_ids in ids["C"].values() for run_id in run_ids)

    report = build(out_root=tmp_path, storage=f"sqlite:///{tmp_path / 'none.db'}")
    sections = _sections(report.read_text())
    every_id = {*trials, *loose, *(r for s in ids.values() for run_ids in s.values() for r in run_ids)}
    for name in ("A", "B", "C"):
        own = {r for run_ids in ids[name].values() for r in run_ids}
        section = sections[f"Phase 1: R-D set {name}"]
        assert {r for r in every_id if r[:8] in section} == own  # its own runs, all of them, nothing else
    assert float(_table_row(sections["Phase 1: R-D set A"], "| A | adam | balanced |")[3]) == pytest.approx(
        rd.bd_rate([{"bpp": b, "psnr": p} for _, b, p in ADAM], [{"bpp": 0.9 * b, "psnr": p} for _, b, p in ADAM]),
        abs=1e-3,
    )
    assert float(_table_row(sections["Phase 1: R-D set B"], "| B | adam | balanced |")[3]) == pytest.approx(
        -20.0, abs=1e-3
    )
    assert "Not drawn as a comparison: its runs differ in `loop.max_steps`" in sections["Phase 1: R-D set C"]
    assert "| C | adam | balanced |" not in sections["Phase 1: R-D set C"]
    assert (report.parent / "rd_A.png").exists() and (report.parent / "rd_B.png").exists()
    assert not (report.parent / "rd_C.png").exists()

    runs_section = sections["Phase 1: codec training runs"]
    assert not any(t[:8] in runs_section for t in trials)  # trials are reported under their study
    assert all(r[:8] in runs_section for r in loose) and "no rd_set" in runs_section and "rd_set=<name>" in runs_section
    study = sections["Optuna study sw"]
    assert all(t[:8] in study for t in trials)
    header = _table_row(study, "| trial |")
    assert header == ["trial", "run id", "state", "optim.gamma", "optim.w_lr", "objective final/val/loss (val/loss)"]


def test_study_section_reports_the_best_trial(mlflow_store, tmp_path):
    parent = MLflowLogger("phase1", run_name="study:s", tags={"kind": "study", "optuna_study": "s"})
    losses = [3.0, 1.5, 2.0]
    for number, loss in enumerate(losses):
        child = MLflowLogger(
            "phase1",
            run_name=f"s-trial-{number}",
            parent_run_id=parent.run_id,
            tags={"optuna_study": "s", "optuna_trial": number, "optuna_state": "COMPLETE"},
        )
        child.log_params({"optim": {"gamma": 0.001 * (number + 1)}})
        child.log_metrics({"test/loss": loss}, step=1)
        child.close()
    parent.client.log_metric(parent.run_id, "study/best_value", min(losses))
    parent.client.set_tag(parent.run_id, "best_trial", losses.index(min(losses)))
    parent.close()
    text = build(study="s", out_root=tmp_path, storage=f"sqlite:///{tmp_path / 'none.db'}").read_text()
    assert re.search(r"best trial 1 with objective 1\.5\b", text)
    assert parent.run_id in text
    assert "| trial | run id | state | optim.gamma |" in text  # no search space logged: the params that vary


def _log_lm_run(bits: float, sample: str, init_from: str | None = None, init_sha: str | None = None) -> str:
    tags = {"phase": "phase2", "model": "debug", **({"init_from_sha256": init_sha} if init_sha else {})}
    logger = MLflowLogger("phase2", run_name="lm", tags=tags)
    logger.log_params({"loop": {"max_steps": 50}, "init_from": init_from})
    logger.log_metrics({"val/bits_per_byte": bits + 0.02, "test/bits_per_byte": bits}, step=50)
    logger.client.log_text(logger.run_id, sample, "sample.txt")
    logger.close()
    return logger.run_id


def test_the_report_opens_with_a_summary_of_what_was_compared_and_what_came_out(mlflow_store, tmp_path):
    import json

    from common.checkpoint import sha256

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "lm.pt").write_bytes(b"the released weights")
    released = {"steps": 4000, "device": "cpu (2 threads)", "run": {"mlflow_run_id": "f" * 32},
                "metrics": {"test/bits_per_byte": 2.5}, "sha256": sha256(weights / "lm.pt")}  # fmt: skip
    (weights / "manifest.json").write_text(json.dumps({"files": {"lm.pt": released}}))
    ids = [_log_rd_run("adam", lm, b, p, rd_set="demo") for lm, b, p in ADAM]
    ids += [_log_rd_run("balanced", lm, 0.9 * b, p, rd_set="demo") for lm, b, p in ADAM]
    old = _log_lm_run(3.0, "The old sample")
    lm = _log_lm_run(2.4, "The history of\nthe world", str(weights / "lm.pt"), released["sha256"])
    text = build(out_root=tmp_path / "out").read_text()
    summary = _sections(text)["Summary"]
    line = next(x for x in summary.splitlines() if "R-D set `demo`" in x)
    assert "adam at 4 lambdas, balanced at 4 lambdas" in line and "model tiny, 100 steps" in line
    assert "BD-rate of Balanced vs Adam **-10.0 %**" in line
    assert "too few images for an interval (3 images; needs at least 8)" in line
    assert all(run_id[:8] in line for run_id in ids)
    phase2 = next(x for x in summary.splitlines() if "**Phase 2**" in x)
    assert f"latest run {lm[:8]}" in phase2 and old[:8] not in phase2 and "test **2.400 bits/byte**" in phase2
    assert "released after 4000 steps on cpu (2 threads): test/bits_per_byte 2.5; run ffffffff" in phase2
    assert "> The history of\n> the world" in summary
    # weights released again under the same name: the run's numbers are not credited to the new release
    newer = _log_lm_run(2.3, "The next", str(weights / "lm.pt"), "0" * 64)
    phase2 = next(x for x in _sections(build(out_root=tmp_path / "again").read_text())["Summary"].splitlines()
                  if "**Phase 2**" in x)  # fmt: skip
    assert f"latest run {newer[:8]}" in phase2 and "(not the weights its manifest lists now)" in phase2
    assert "released after" not in phase2
    html = (tmp_path / "out" / "all" / "index.html").read_text()
    assert "<h2>Summary</h2><ul><li><strong>Phase 1, R-D set <code>demo</code></strong>" in html
    assert "<blockquote>The history of\nthe world</blockquote>" in html


def test_a_set_trained_again_draws_its_latest_runs(mlflow_store, tmp_path):
    first = [_log_rd_run("adam", lm, 2 * b, p, rd_set="s") for lm, b, p in ADAM]
    latest = [_log_rd_run("adam", lm, b, p, rd_set="s") for lm, b, p in ADAM]
    latest += [_log_rd_run("balanced", lm, 0.9 * b, p, rd_set="s") for lm, b, p in ADAM]
    rd_set = rd_sets(load_runs())["s"]
    assert sorted(p["run_id"] for c in rd_set.curves.values() for p in c) == sorted(latest)
    assert sorted(rd_set.superseded["run_id"]) == sorted(first)
    section = _sections(build(out_root=tmp_path).read_text())["Phase 1: R-D set s"]
    assert "Replaced by a later run of the same optimizer and lambda" in section
    assert all(r[:8] in section for r in first)
    assert float(_table_row(section, "| s | adam | balanced |")[3]) == pytest.approx(-10.0, abs=1e-3)


def test_per_image_test_numbers_give_the_bd_rate_a_paired_interval(mlflow_store, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, 10)  # ten photos, some need four times the bits of others
    for lm, b, p in ADAM:
        noise = rng.normal(0, 0.01, 10)
        psnr = list(p + rng.normal(0, 0.5, 10))
        _log_rd_run("adam", lm, b, p, rd_set="big", per_image={"images": [f"{i}.png" for i in range(10)],
                    "bpp_per_image": list(b * scale), "psnr_per_image": psnr})  # fmt: skip
        _log_rd_run("balanced", lm, b, p, rd_set="big", per_image={"images": [f"{i}.png" for i in range(10)],
                    "bpp_per_image": list(0.9 * b * scale * (1 + noise)), "psnr_per_image": psnr})  # fmt: skip
    section = _sections(build(out_root=tmp_path).read_text())["Phase 1: R-D set big"]
    row = _table_row(section, "| big | adam | balanced |")
    assert float(row[3]) == pytest.approx(-10.0, abs=1.0)
    low, high = (float(x) for x in re.match(r"(-?[\d.]+) to (-?[\d.]+) \(10 images paired", row[4]).groups())
    assert low < -10.0 < high < 0  # contains the true saving, excludes no saving

    # a set whose optimizers were measured on other photos cannot be paired: no interval, and the report is built
    for optim, names in (("adam", "abcdefghij"), ("balanced", "klmnopqrst")):
        for lm, b, p in ADAM:
            _log_rd_run(optim, lm, b, p, rd_set="odd", per_image={"images": [f"{n}.png" for n in names],
                        "bpp_per_image": [b] * 10, "psnr_per_image": [p] * 10})  # fmt: skip
    section = _sections(build(out_root=tmp_path / "odd").read_text())["Phase 1: R-D set odd"]
    assert "no interval: the operating points list different test images" in section


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test-deps` installs it, as root)")
def test_a_browser_shows_the_reports_summary_and_its_rd_plot(mlflow_store, tmp_path):
    """The report as a reader opens it: headless Chromium renders index.html; the summary is on the page and the
    R-D plot is drawn (its curves' colours are on the screenshot), not a broken image."""
    import numpy as np
    from PIL import Image

    for lm, b, p in ADAM:
        _log_rd_run("adam", lm, b, p, rd_set="demo")
        _log_rd_run("balanced", lm, 0.9 * b, p, rd_set="demo")
    _log_lm_run(2.4, "The history of the world")
    page = build(out_root=tmp_path).with_suffix(".html")
    dom = chromium("--dump-dom", page.as_uri())
    assert "<h2>Summary</h2>" in dom and "BD-rate of Balanced vs Adam <strong>-10.0 %</strong>" in dom
    assert '<img src="rd_demo.png"' in dom and "The history of the world" in dom

    def curve_pixels(name: str) -> int:
        """Pixels in matplotlib's first two line colours (Adam's and Balanced's curves) on a screenshot."""
        chromium(f"--screenshot={tmp_path / name}", "--window-size=1200,2600", page.as_uri())
        pixels = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(int)
        return sum(int((np.abs(pixels - c).sum(-1) < 60).sum()) for c in ((31, 119, 180), (255, 127, 14)))

    shown = curve_pixels("report.png")
    (page.parent / "rd_demo.png").rename(tmp_path / "rd_demo.png")  # the same page with the plot missing
    assert shown - curve_pixels("without_plot.png") > 1000, "the R-D plot is not drawn on the page"
