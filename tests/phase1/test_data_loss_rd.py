"""Phase 1 data, loss and R-D math (no codec needed)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from phase1 import rd
from phase1.data import ImageCrops, builtin_images, image_paths, list_images, load_rgb
from phase1.loss import RateDistortionLoss, bits_per_pixel


def test_builtin_split_is_real_disjoint_photos():
    train, test = builtin_images("train"), builtin_images("test")
    assert len(train) == 9 and len(test) == 3
    assert not {p.name for p in train} & {p.name for p in test}
    for path in train + test:
        x, note = load_rgb(path)
        assert x.shape[0] == 3 and min(x.shape[1:]) >= 256 and note is None
        assert 0.05 < float(x.std()) < 0.5  # a photograph, not a flat or synthetic image


def test_folder_scan_reports_bad_files_once_and_skips_them(tmp_path):
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    paths = list_images(tmp_path)
    assert len(paths) == 3  # recursive
    with pytest.warns(UserWarning, match="2 of 3 files left out") as record:
        ds = ImageCrops(paths, patch_size=256)
    assert len(record) == 1 and "broken.jpg" in str(record[0].message) and "small.png" in str(record[0].message)
    assert len(ds) == 1 and ds[0].shape == (3, 256, 256)


def test_file_broken_mid_run_is_replaced_not_fatal(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / name)
    ds = ImageCrops(list_images(tmp_path), patch_size=32)
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="a.png is not a readable image"):
        sample = ds[0]
    assert sample.shape == (3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[0]  # reported once only


def test_grayscale_rgba_converted_and_16bit_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")
    x, note = load_rgb(tmp_path / "gray.png")
    assert x.shape == (3, 8, 8) and "L converted to RGB" in note
    assert "alpha dropped" in load_rgb(tmp_path / "rgba.png")[1]
    with pytest.raises(ValueError, match="16-bit"):
        load_rgb(tmp_path / "deep.png")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_paths("folder", str(tmp_path / "nope"), "train")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        image_paths("folder", str(tmp_path), "train")
    with pytest.raises(ValueError, match="data.source='ftp'"):
        image_paths("ftp", None, "train")


def test_crops_are_deterministic_per_seed():
    ds = ImageCrops(builtin_images("train")[:2], patch_size=64)
    torch.manual_seed(1)
    a = ds[0]
    torch.manual_seed(1)
    assert torch.equal(a, ds[0])


def test_cached_decoding_gives_the_same_crops_and_never_hands_out_the_cache():
    paths = builtin_images("train")[:3]
    plain, cached = ImageCrops(paths, 64), ImageCrops(paths, 64, cache=True)
    for i in range(6):  # the second round reads the cache
        torch.manual_seed(i)
        a = plain[i % 3]
        torch.manual_seed(i)
        b = cached[i % 3]
        assert torch.equal(a, b)
    whole = ImageCrops(paths, None, cache=True)
    whole[0].zero_()  # a caller scribbling on its sample must not change the next read
    assert whole[0].abs().sum() > 0


def test_rate_distortion_loss_terms():
    x = torch.rand(2, 3, 16, 16)
    out = {"x_hat": x + 0.1, "likelihoods": {"y": torch.full((2, 4, 4, 4), 0.5), "z": torch.full((2, 2, 2, 2), 0.25)}}
    terms = RateDistortionLoss(lmbda=0.01)(out, x)
    bpp = (2 * 4 * 4 * 4 * 1 + 2 * 2 * 2 * 2 * 2) / (2 * 16 * 16)  # bits: -log2(0.5)=1, -log2(0.25)=2
    assert float(terms["bpp_loss"]) == pytest.approx(bpp)
    assert float(terms["distortion"]) == pytest.approx(0.01 * 255**2 * 0.01, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["distortion"]) + bpp, rel=1e-6)
    assert float(bits_per_pixel(out["likelihoods"], 2 * 16 * 16)) == pytest.approx(bpp)
    with pytest.raises(ValueError, match="loss.metric='ssim'"):
        RateDistortionLoss(metric="ssim")


def _curve(rates, psnrs):
    return [{"bpp": r, "psnr": p} for r, p in zip(rates, psnrs)]


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


def test_bootstrap_interval_contains_the_point_estimate():
    rng = np.random.default_rng(0)
    n = 8
    anchor, test = [], []
    for bpp, psnr in zip([0.2, 0.35, 0.6, 0.9], [28.0, 30.5, 33.0, 35.0]):
        mse = 10 ** (-psnr / 10) * rng.uniform(0.8, 1.2, n)
        rates = bpp * rng.uniform(0.7, 1.3, n)
        anchor.append({"bpp": rates.mean(), "psnr": 10 * np.log10(1 / mse.mean()), "bpp_per_image": rates,
                       "mse_per_image": mse})
        test.append({"bpp": 0.9 * rates.mean(), "psnr": 10 * np.log10(1 / mse.mean()),
                     "bpp_per_image": 0.9 * rates, "mse_per_image": mse})
    result = rd.bd_rate_bootstrap(anchor, test, samples=200)
    assert result["ci_low"] <= result["bd_rate"] <= result["ci_high"]
    assert result["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    assert result["ci_high"] - result["ci_low"] < 1.0  # the same images, 10 % less rate each: a tight interval


def test_quality_overlap():
    low, high, frac = rd.quality_overlap(_curve([1, 2], [30, 34]), _curve([1, 2], [32, 36]))
    assert (low, high, frac) == (32, 34, 0.5)


def test_rd_plot_is_written(tmp_path):
    path = rd.plot_rd({"adam": _curve([0.2, 0.4], [28, 31]), "balanced": _curve([0.2, 0.4], [28.5, 31.2])},
                      tmp_path / "rd.png")
    assert path.stat().st_size > 5000
