"""Rate-distortion curves: BD-rate / BD-PSNR through the maintained `bjontegaard` package (PCHIP, as the
JCT-VC sheet), a paired per-image bootstrap confidence interval, the quality overlap of two curves, and the plot.

A curve is a list of operating points (one per trained lambda), each point a dict with "bpp" and "psnr" and,
for the bootstrap, per-image lists "bpp_per_image" / "psnr_per_image" over the same test images. One PSNR
definition throughout, CompressAI's (what phase1.evaluate writes): "psnr" is the mean over images of the
per-image PSNR, not the PSNR of the mean MSE, and "bpp" the mean of the per-image bpp.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

Curve = Sequence[dict]


def _sorted_xy(rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rates)
    return np.asarray(rates, float)[order], np.asarray(psnrs, float)[order]


def _monotone(rates: Sequence[float], psnrs: Sequence[float]) -> bool:
    r, p = _sorted_xy(rates, psnrs)
    return bool(np.all(np.diff(p) > 0))


def _check(rates: Sequence[float], psnrs: Sequence[float], name: str) -> None:
    if len(rates) < 4:
        raise ValueError(f"{name} has {len(rates)} points; BD-rate with PCHIP needs at least 4 (one per lambda)")
    if not _monotone(rates, psnrs):
        raise ValueError(f"{name} is not monotone (PSNR must rise with bpp): train longer or drop the outlier")


def quality_overlap(anchor: Curve, test: Curve) -> tuple[float, float, float]:
    """(low, high, fraction): the common PSNR range of two curves and its share of the anchor's range."""
    pa, pt = [p["psnr"] for p in anchor], [p["psnr"] for p in test]
    low, high = max(min(pa), min(pt)), min(max(pa), max(pt))
    span = max(pa) - min(pa)
    return low, high, max(high - low, 0.0) / span if span > 0 else 0.0


def bd_rate(anchor: Curve, test: Curve, min_overlap: float = 0.0) -> float:
    """Bjontegaard delta rate of `test` against `anchor` in percent (negative: test needs fewer bits)."""
    import bjontegaard

    _check([p["bpp"] for p in anchor], [p["psnr"] for p in anchor], "anchor curve")
    _check([p["bpp"] for p in test], [p["psnr"] for p in test], "test curve")
    ra, pa = _sorted_xy([p["bpp"] for p in anchor], [p["psnr"] for p in anchor])
    rt, pt = _sorted_xy([p["bpp"] for p in test], [p["psnr"] for p in test])
    return float(
        bjontegaard.bd_rate(ra, pa, rt, pt, method="pchip", require_matching_points=False, min_overlap=min_overlap)
    )


def bd_psnr(anchor: Curve, test: Curve, min_overlap: float = 0.0) -> float:
    """Bjontegaard delta PSNR in dB (positive: test is better at equal rate)."""
    import bjontegaard

    ra, pa = _sorted_xy([p["bpp"] for p in anchor], [p["psnr"] for p in anchor])
    rt, pt = _sorted_xy([p["bpp"] for p in test], [p["psnr"] for p in test])
    return float(
        bjontegaard.bd_psnr(ra, pa, rt, pt, method="pchip", require_matching_points=False, min_overlap=min_overlap)
    )


MIN_IMAGES_FOR_INTERVAL = 8  # below this a per-image bootstrap has too few distinct resamples to mean anything


def _per_image(point: dict) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, PSNR) of each test image at one operating point. The PSNR is per image, as CompressAI and
    phase1.evaluate report it; from "mse_per_image" only when "psnr_per_image" is missing (older files)."""
    bpp = np.asarray(point["bpp_per_image"], float)
    if "psnr_per_image" in point:
        return bpp, np.asarray(point["psnr_per_image"], float)
    return bpp, 10 * np.log10(1 / np.asarray(point["mse_per_image"], float))


def _per_image_table(curve: Curve, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, PSNR) arrays of shape (points, images). A point's "bpp"/"psnr", where given, must be the mean of
    its per-image values: the interval is only about the point estimate when both use one PSNR definition."""
    bpp, psnr = map(np.array, zip(*(_per_image(p) for p in curve)))
    for i, point in enumerate(curve):
        for key, values in (("bpp", bpp[i]), ("psnr", psnr[i])):
            if key in point and not np.isclose(point[key], values.mean(), rtol=1e-9, atol=1e-9):
                raise ValueError(
                    f"{name} point {i}: '{key}' {point[key]:.6g} is not the mean of its per-image "
                    f"values ({values.mean():.6g}); BD-rate needs one definition (mean over images)"
                )
    return bpp, psnr


def _mean_curve(bpp: np.ndarray, psnr: np.ndarray) -> list[dict]:
    return [{"bpp": float(b), "psnr": float(q)} for b, q in zip(bpp.mean(1), psnr.mean(1))]


def _check_same_images(anchor: Curve, test: Curve) -> int:
    """The number of test images; every point of both curves must be measured on the same images in the same
    order, or resampling image i would mix different photos across points."""
    n = len(anchor[0]["bpp_per_image"])
    points = [*anchor, *test]
    if any(len(p["bpp_per_image"]) != n for p in points):
        raise ValueError("every operating point must be measured on the same test images")
    names = [p["images"] for p in points if "images" in p]
    if any(list(x) != list(names[0]) for x in names):
        raise ValueError(
            "the operating points list different test images (or in another order); pairing needs "
            "the same images everywhere"
        )
    return n


def _bd_rate_any_order(ra: np.ndarray, pa: np.ndarray, rt: np.ndarray, pt: np.ndarray) -> float:
    """BD-rate for curves that need not be monotone (bootstrap resamples). `bjontegaard` interpolates log-rate
    over PSNR with PCHIP, which needs PSNR strictly increasing: fed points sorted by rate that are not
    monotone it raises (or fails an assertion), so points go in sorted by PSNR instead; the integral is then
    defined whenever the PSNRs differ. Equal PSNRs (two points alike on every picked image) are merged at
    their geometric-mean rate."""
    import bjontegaard

    def by_psnr(rates, psnrs):
        psnrs, where = np.unique(psnrs, return_inverse=True)  # sorted, ties merged
        log_rates = np.bincount(where, np.log(rates)) / np.bincount(where)
        return np.exp(log_rates), psnrs

    (ra, pa), (rt, pt) = by_psnr(ra, pa), by_psnr(rt, pt)
    return float(bjontegaard.bd_rate(ra, pa, rt, pt, method="pchip", require_matching_points=False, min_overlap=0))


def bd_rate_bootstrap(anchor: Curve, test: Curve, samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """BD-rate with a paired per-image bootstrap percentile interval.

    Every curve point is (mean over images of per-image bpp, mean over images of per-image PSNR), CompressAI's
    definition, for the point estimate and for each resample alike. A resample draws n image indices with
    replacement and uses the same indices at every point of both curves: the two codecs are compared on the
    same photos, so image-to-image differences (an easy photo needs few bits) cancel instead of widening the
    interval. Every resample is kept: dropping those whose curves are not monotone would bias what is left,
    so they get the BD-rate over their points sorted by PSNR (see `_bd_rate_any_order`) and are counted in
    "non_monotone". The full curves must still be monotone (the point estimate is `bd_rate`, which refuses
    them otherwise). Below MIN_IMAGES_FOR_INTERVAL images there are too few distinct resamples for an
    interval: ci_low/ci_high are None, "note" says why and the point estimate is still given.
    """
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap needs samples >= 1 and 0 < level < 1 (got samples={samples}, level={level})")
    n = _check_same_images(anchor, test)
    (ba, qa), (bt, qt) = _per_image_table(anchor, "anchor curve"), _per_image_table(test, "test curve")
    point = bd_rate(_mean_curve(ba, qa), _mean_curve(bt, qt))
    result = {
        "bd_rate": point,
        "ci_low": None,
        "ci_high": None,
        "level": level,
        "n_images": n,
        "samples": 0,
        "non_monotone": 0,
        "note": None,
    }
    if n < MIN_IMAGES_FOR_INTERVAL:
        result["note"] = f"too few images for an interval ({n} images; needs at least {MIN_IMAGES_FOR_INTERVAL})"
        return result
    rng = np.random.default_rng(seed)
    values, non_monotone = [], 0
    for picks in rng.integers(0, n, (samples, n)):
        ra, pa, rt, pt = (x[:, picks].mean(1) for x in (ba, qa, bt, qt))
        non_monotone += not (_monotone(ra, pa) and _monotone(rt, pt))
        values.append(_bd_rate_any_order(ra, pa, rt, pt))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    result.update(ci_low=float(lo), ci_high=float(hi), samples=samples, non_monotone=non_monotone)
    return result


def plot_rd(curves: dict[str, Curve], path: str | Path, title: str = "Rate-distortion") -> Path:
    """PSNR vs bpp, one line per curve, each point labelled with its lambda when known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, curve in curves.items():
        pts = sorted(curve, key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], marker="o", label=name)
        for p in pts:
            if "lmbda" in p:
                ax.annotate(
                    f"{p['lmbda']:g}", (p["bpp"], p["psnr"]), fontsize=7, xytext=(3, -9), textcoords="offset points"
                )
    ax.set_xlabel("bits per pixel (real bitstreams)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
