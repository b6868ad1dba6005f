"""Rate-distortion curves: BD-rate / BD-PSNR through the maintained `bjontegaard` package (PCHIP, as the
JCT-VC sheet), a per-image bootstrap confidence interval, the quality overlap of two curves, and the plot.

A curve is a list of operating points (one per trained lambda), each point a dict with mean "bpp" and "psnr"
and, for the bootstrap, per-image lists "bpp_per_image" / "psnr_per_image" over the same test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

Curve = Sequence[dict]


def _sorted_xy(rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rates)
    return np.asarray(rates, float)[order], np.asarray(psnrs, float)[order]


def _check(rates: Sequence[float], psnrs: Sequence[float], name: str) -> None:
    if len(rates) < 4:
        raise ValueError(f"{name} has {len(rates)} points; BD-rate with PCHIP needs at least 4 (one per lambda)")
    r, p = _sorted_xy(rates, psnrs)
    if np.any(np.diff(p) <= 0):
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
    return float(bjontegaard.bd_rate(ra, pa, rt, pt, method="pchip", require_matching_points=False,
                                     min_overlap=min_overlap))


def bd_psnr(anchor: Curve, test: Curve, min_overlap: float = 0.0) -> float:
    """Bjontegaard delta PSNR in dB (positive: test is better at equal rate)."""
    import bjontegaard

    ra, pa = _sorted_xy([p["bpp"] for p in anchor], [p["psnr"] for p in anchor])
    rt, pt = _sorted_xy([p["bpp"] for p in test], [p["psnr"] for p in test])
    return float(bjontegaard.bd_psnr(ra, pa, rt, pt, method="pchip", require_matching_points=False,
                                     min_overlap=min_overlap))


def _resampled(curve: Curve, picks: np.ndarray) -> list[dict]:
    out = []
    for point in curve:
        bpp = np.asarray(point["bpp_per_image"])[picks].mean()
        mse = np.asarray(point["mse_per_image"])[picks].mean() if "mse_per_image" in point else None
        psnr = 10 * np.log10(1 / mse) if mse is not None else np.asarray(point["psnr_per_image"])[picks].mean()
        out.append({"bpp": float(bpp), "psnr": float(psnr)})
    return out


def bd_rate_bootstrap(anchor: Curve, test: Curve, samples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """BD-rate with a per-image bootstrap confidence interval: resample the test images with replacement,
    recompute both curves and the BD-rate; resamples whose curves are not monotone are counted and left out."""
    n = len(anchor[0]["bpp_per_image"])
    if any(len(p["bpp_per_image"]) != n for p in [*anchor, *test]):
        raise ValueError("every operating point must be measured on the same test images")
    rng = np.random.default_rng(seed)
    values, rejected = [], 0
    for _ in range(samples):
        picks = rng.integers(0, n, n)
        try:
            values.append(bd_rate(_resampled(anchor, picks), _resampled(test, picks)))
        except ValueError:  # a resample whose curve is not monotone has no BD-rate; counted below
            rejected += 1
    if not values:
        raise ValueError("no bootstrap resample gave monotone curves; the BD-rate is not defined for this data")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"bd_rate": bd_rate(anchor, test), "ci_low": float(lo), "ci_high": float(hi), "level": level,
            "samples": len(values), "rejected": rejected}


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
                ax.annotate(f"{p['lmbda']:g}", (p["bpp"], p["psnr"]), fontsize=7, xytext=(3, -9),
                            textcoords="offset points")
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
