"""BD-rate and its paired per-image bootstrap (phase1.rd), on curves built the way phase1.evaluate builds them."""

import json

import bjontegaard
import numpy as np
import pytest

from phase1 import evaluate, rd
from phase1.loss import psnr

RATES = [0.12, 0.25, 0.45, 0.75, 1.2]  # the anchor's typical bpp at each of 5 lambdas


def _curve(rates, psnrs):
    return [{"bpp": r, "psnr": p} for r, p in zip(rates, psnrs)]


def _point(bpp, mse):
    """One operating point as phase1.evaluate.operating_point writes it: per-image PSNR from per-image MSE
    (phase1.loss.psnr, as evaluate_image), then plain means over the images."""
    bpp, mse = [float(b) for b in bpp], [float(m) for m in mse]
    psnrs = [psnr(m) for m in mse]
    return {
        "bpp": sum(bpp) / len(bpp),
        "psnr": sum(psnrs) / len(psnrs),
        "bpp_per_image": bpp,
        "mse_per_image": mse,
        "psnr_per_image": psnrs,
    }


def _rd_curve(bpp, mse):
    """A curve from per-image tables of shape (lambdas, images)."""
    return [_point(b, m) for b, m in zip(bpp, mse)]


def _photos(rng, n, spread=0.3, offsets=1.5):
    """Per-image (bpp, mse) tables of shape (lambdas, n): each photo has its own difficulty (a rate factor),
    its own quality offset and small noise, so images differ and resampling them moves the curve."""
    factor = np.exp(rng.normal(0, spread, n))
    bpp = np.outer(RATES, factor) * rng.uniform(0.95, 1.05, (len(RATES), n))
    quality = 27 + 7 * np.log2(np.asarray(RATES)[:, None] / RATES[0]) + rng.normal(0, offsets, n)
    quality = quality + rng.normal(0, 0.2, quality.shape)  # gaps between lambdas are >= 4.7 dB: still monotone
    return bpp, 10 ** (-quality / 10)


def _mse_psnr_curve(curve):
    """The other PSNR definition, PSNR of the mean MSE: only to show that the data tell the two apart."""
    return [{"bpp": p["bpp"], "psnr": 10 * np.log10(1 / np.mean(p["mse_per_image"]))} for p in curve]


@pytest.fixture
def varied_saving():
    """12 photos; the test codec saves about 10 % on each (0.9 times a per-image factor whose geometric mean
    is 1) at the same per-image MSE."""
    rng = np.random.default_rng(3)
    bpp, mse = _photos(rng, 12)
    noise = rng.normal(0, 0.05, 12)
    return _rd_curve(bpp, mse), _rd_curve(bpp * 0.9 * np.exp(noise - noise.mean()), mse)


def test_bd_rate_of_curve_against_itself_is_zero_and_10pct_less_rate_is_minus_10():
    rates, psnrs = [0.2, 0.35, 0.6, 0.9], [28.0, 30.5, 33.0, 35.0]
    anchor = _curve(rates, psnrs)
    assert rd.bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert rd.bd_rate(anchor, _curve([r * 0.9 for r in rates], psnrs)) == pytest.approx(-10.0, abs=1e-6)
    assert rd.bd_psnr(anchor, _curve([r * 0.9 for r in rates], psnrs)) > 0


def test_bd_rate_refuses_non_monotone_or_short_curves():
    with pytest.raises(ValueError, match="not monotone"):
        rd.bd_rate(_curve([0.2, 0.3, 0.4, 0.5], [30, 29, 31, 32]), _curve([0.2, 0.3, 0.4, 0.5], [28, 29, 30, 31]))
    with pytest.raises(ValueError, match="at least 4"):
        rd.bd_rate(_curve([0.2, 0.3, 0.4], [28, 29, 30]), _curve([0.2, 0.3, 0.4], [28, 29, 30]))


def test_bootstrap_of_a_10pct_saving_is_near_minus_10_and_its_interval_excludes_0(varied_saving):
    anchor, test = varied_saving
    result = rd.bd_rate_bootstrap(anchor, test, samples=1000)
    assert result["bd_rate"] == pytest.approx(-10.0, abs=1.5)
    assert result["ci_low"] < -10.0 < result["ci_high"] < 0.0
    assert result["ci_high"] - result["ci_low"] > 0.5  # the per-image savings differ: resampling shows it
    assert result["ci_low"] <= result["bd_rate"] <= result["ci_high"]
    assert (result["n_images"], result["samples"], result["note"]) == (12, 1000, None)


def test_point_estimate_is_bd_rate_on_mean_of_per_image_psnr():
    rng = np.random.default_rng(4)
    bpp, mse = _photos(rng, 12, offsets=3.0)
    gain = np.linspace(1.0, -0.5, 12)[np.argsort(np.argsort(-mse[0]))]  # +1 dB on the worst photo, -0.5 on the best
    anchor, test = _rd_curve(bpp, mse), _rd_curve(bpp * 0.9, mse * 10 ** (-gain / 10))
    result = rd.bd_rate_bootstrap(anchor, test, samples=50)
    mean_points = [
        [{"bpp": np.mean(p["bpp_per_image"]), "psnr": np.mean(p["psnr_per_image"])} for p in curve]
        for curve in (anchor, test)
    ]
    assert result["bd_rate"] == pytest.approx(rd.bd_rate(*mean_points), abs=1e-9)
    assert result["bd_rate"] == pytest.approx(rd.bd_rate(anchor, test), abs=1e-9)  # what `compare` reports
    # the PSNR of the mean MSE gives another number on these data, so the test above can tell them apart
    assert abs(rd.bd_rate(_mse_psnr_curve(anchor), _mse_psnr_curve(test)) - result["bd_rate"]) > 1.0


def test_paired_resampling_gives_a_tight_interval_where_unpaired_would_be_wide():
    rng = np.random.default_rng(5)
    bpp, mse = _photos(rng, 12, spread=0.7, offsets=3.0)  # very different photos
    anchor, test = _rd_curve(bpp, mse), _rd_curve(bpp * 0.9, mse)  # the same 10 % saving on every photo
    result = rd.bd_rate_bootstrap(anchor, test, samples=300)
    assert result["ci_low"] == pytest.approx(-10.0, abs=1e-6) and result["ci_high"] == pytest.approx(-10.0, abs=1e-6)
    unpaired = []
    for _ in range(50):  # anchor and test images drawn independently: image differences no longer cancel
        a, t = rng.integers(0, 12, 12), rng.integers(0, 12, 12)
        unpaired.append(rd.bd_rate(_rd_curve(bpp[:, a], mse[:, a]), _rd_curve(bpp[:, t] * 0.9, mse[:, t])))
    assert np.ptp(unpaired) > 10.0


def _dipping_photos():
    """10 photos on which two (0 and 1) lose 3 dB from lambda 1 to 2 while the others gain 1 dB: the full
    curve still rises (by 0.2 dB there) but resamples holding 3+ copies of photos 0/1 do not."""
    quality = np.array([26.0, 30.0, 31.0, 34.0, 37.0])[:, None] + np.linspace(-1, 1, 10)
    quality[2, :2] = quality[1, :2] - 3
    bpp = np.outer(RATES, np.linspace(0.7, 1.4, 10))
    return bpp, 10 ** (-quality / 10)


def test_every_resample_is_kept_and_non_monotone_ones_are_counted(monkeypatch):
    bpp, mse = _dipping_photos()
    anchor, test = _rd_curve(bpp, mse), _rd_curve(bpp * 0.9, mse)
    values = []
    inner = rd._bd_rate_any_order

    def recorded(*args):
        values.append(inner(*args))
        return values[-1]

    monkeypatch.setattr(rd, "_bd_rate_any_order", recorded)
    result = rd.bd_rate_bootstrap(anchor, test, samples=400)
    assert result["samples"] == 400 and len(values) == 400
    assert 0 < result["non_monotone"] < 400
    assert np.all(np.isfinite(values))
    # each resampled test curve is its anchor at 0.9 times the rate, monotone or not: -10 % every time
    assert np.allclose(values, -10.0, atol=1e-6)
    assert result["ci_low"] == pytest.approx(-10.0, abs=1e-6) and result["ci_high"] == pytest.approx(-10.0, abs=1e-6)


def test_full_sample_under_the_one_psnr_definition_is_not_counted_non_monotone():
    """The issue: PSNR of the mean MSE made the full sample itself non-monotone. Here one photo gets 1 dB worse
    from lambda 1 to 2 at a low PSNR, the nine others 1 dB better: the mean of per-image PSNR rises, the PSNR of
    the mean MSE falls."""
    quality = np.array([26.0, 30.0, 31.0, 34.0, 37.0])[:, None] + np.zeros(10)
    quality[:, 0] = [17.0, 20.0, 19.0, 24.0, 28.0]
    bpp = np.outer(RATES, np.linspace(0.7, 1.4, 10))
    mse = 10 ** (-quality / 10)
    anchor, test = _rd_curve(bpp, mse), _rd_curve(bpp * 0.9, mse)
    with pytest.raises(ValueError, match="not monotone"):
        rd.bd_rate(_mse_psnr_curve(anchor), _mse_psnr_curve(test))
    result = rd.bd_rate_bootstrap(anchor, test, samples=500)
    assert result["non_monotone"] < 0.05 * 500  # only resamples with 5+ copies of photo 0 dip
    assert result["bd_rate"] == pytest.approx(-10.0, abs=1e-6)


def test_bjontegaard_needs_psnr_sorted_points_and_resamples_get_them():
    ra, pa = np.array([0.2, 0.35, 0.6, 0.9]), np.array([28.0, 30.5, 33.0, 35.0])
    rt, pt = 0.9 * ra, np.array([28.0, 31.5, 31.0, 35.0])  # sorted by rate, PSNR dips
    with pytest.raises(ValueError, match="strictly increasing"):
        bjontegaard.bd_rate(ra, pa, rt, pt, method="pchip", require_matching_points=False, min_overlap=0)
    with pytest.raises(AssertionError):  # first PSNR above the last: the package's flip check trips
        bjontegaard.bd_rate(ra, pa, rt, pt[[3, 1, 2, 0]], method="pchip", require_matching_points=False, min_overlap=0)
    order = np.argsort(pt)
    expected = bjontegaard.bd_rate(
        ra, pa, rt[order], pt[order], method="pchip", require_matching_points=False, min_overlap=0
    )
    assert rd._bd_rate_any_order(ra, pa, rt, pt) == pytest.approx(expected) and np.isfinite(expected)
    assert rd._bd_rate_any_order(ra, pa, 0.9 * ra, pa) == pytest.approx(rd.bd_rate(_curve(ra, pa), _curve(rt, pa)))
    tied = rd._bd_rate_any_order(ra, pa, np.append(rt, 0.5), np.append(pt, 31.0))  # two points at 31 dB
    assert np.isfinite(tied)


@pytest.mark.parametrize("n", [3, 7])
def test_fewer_than_8_images_give_no_interval_but_a_point_estimate(n):
    bpp, mse = _photos(np.random.default_rng(1), n)
    result = rd.bd_rate_bootstrap(_rd_curve(bpp, mse), _rd_curve(bpp * 0.9, mse), samples=1000)
    assert result["ci_low"] is None and result["ci_high"] is None
    assert "too few images for an interval" in result["note"]
    assert (result["n_images"], result["samples"]) == (n, 0)
    assert result["bd_rate"] == pytest.approx(-10.0, abs=1e-6)


def test_compare_cli_prints_the_note_instead_of_an_interval(tmp_path, capsys):
    bpp, mse = _photos(np.random.default_rng(2), 3)
    for name, curve in (("a", _rd_curve(bpp, mse)), ("b", _rd_curve(bpp * 0.9, mse))):
        (tmp_path / f"{name}.json").write_text(json.dumps({"points": curve}))
    assert evaluate.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--bootstrap", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bootstrap"]["note"].startswith("too few images for an interval")
    assert out["bootstrap"]["ci_low"] is None and out["bootstrap"]["ci_high"] is None
    assert out["bd_rate_percent"] == pytest.approx(-10.0, abs=1e-6)


def test_bootstrap_refuses_mixed_psnr_definitions_and_mismatched_images(varied_saving):
    anchor, test = varied_saving
    mixed = [{**p, "psnr": q["psnr"]} for p, q in zip(anchor, _mse_psnr_curve(anchor))]
    with pytest.raises(ValueError, match="not the mean of its per-image"):
        rd.bd_rate_bootstrap(mixed, test)
    named = [{**p, "images": [f"{i}.png" for i in range(12)]} for p in anchor]
    named[0]["images"] = named[0]["images"][::-1]
    with pytest.raises(ValueError, match="different test images"):
        rd.bd_rate_bootstrap(named, test)
