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
    train, val, test = builtin_images("train"), builtin_images("val"), builtin_images("test")
    assert len(train) == 7 and len(val) == 2 and len(test) == 3
    names = [p.name for p in train + val + test]
    assert len(set(names)) == len(names)  # three disjoint sets
    for path in train + val + test:
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
    with pytest.warns(UserWarning, match="a.png cannot be read"):
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
    assert x.shape == (3, 8, 8) and "gray.png is grayscale" in note
    assert "alpha channel" in load_rgb(tmp_path / "rgba.png")[1]
    with pytest.raises(ValueError, match="16-bit"):
        load_rgb(tmp_path / "deep.png")


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(path)


def test_folder_splits_hold_out_validation_images_from_training(tmp_path):
    for i in range(6):
        _png(tmp_path / "train" / f"t{i}.png")
    _png(tmp_path / "test" / "x.png")
    train, val, test = (image_paths("folder", str(tmp_path), s, val_count=2) for s in ("train", "val", "test"))
    assert len(val) == 2 and len(train) == 4 and [p.name for p in test] == ["x.png"]
    assert not set(train) & set(val)
    assert image_paths("folder", str(tmp_path), "val", val_count=2) == val  # the same pick every time
    _png(tmp_path / "val" / "v.png")  # a val/ folder takes precedence: all training images train
    assert [p.name for p in image_paths("folder", str(tmp_path), "val")] == ["v.png"]
    assert len(image_paths("folder", str(tmp_path), "train")) == 6
    (tmp_path / "val" / "v.png").unlink()
    (tmp_path / "val").rmdir()
    with pytest.raises(ValueError, match="val_count=9"):
        image_paths("folder", str(tmp_path), "val", val_count=9)
    flat = tmp_path / "flat"
    _png(flat / "a.png")
    with pytest.raises(FileNotFoundError, match="no train/ or test/ folder"):
        image_paths("folder", str(flat), "train")


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


def test_quality_overlap():
    low, high, frac = rd.quality_overlap(_curve([1, 2], [30, 34]), _curve([1, 2], [32, 36]))
    assert (low, high, frac) == (32, 34, 0.5)


def test_rd_plot_is_written(tmp_path):
    path = rd.plot_rd(
        {"adam": _curve([0.2, 0.4], [28, 31]), "balanced": _curve([0.2, 0.4], [28.5, 31.2])}, tmp_path / "rd.png"
    )
    assert path.stat().st_size > 5000


def _png_16bit_rgb(path, height=8, width=8):
    """A 16-bit RGB PNG (Pillow opens it as mode RGB and would cut it to 8 bits)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + np.full((width, 3), 40000, ">u2").tobytes() for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_rgb_is_refused_not_cut_to_8_bits(tmp_path):
    _png_16bit_rgb(tmp_path / "deep_rgb.png")
    assert Image.open(tmp_path / "deep_rgb.png").mode == "RGB"  # what Pillow reports: the trap
    with pytest.raises(ValueError, match="deep_rgb.png has 16-bit"):
        load_rgb(tmp_path / "deep_rgb.png")


def test_exif_rotation_is_applied_and_animation_frames_are_noted(tmp_path):
    from phase1.data import read_rgb

    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = read_rgb(tmp_path / "rotated.jpg")
    assert tuple(image.pixels.shape) == (3, 4, 2) and image.rotated and "EXIF orientation" in image.note
    assert image.pixels[:, 0, 1].mean() > 0.5  # the marker is now top-right, where a viewer shows it
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = read_rgb(tmp_path / "anim.gif")
    assert image.frames == 3 and "has 3 frames; only the first is coded" in image.note
    plain = Image.new("RGB", (8, 8))
    plain.save(tmp_path / "plain.png")
    assert read_rgb(tmp_path / "plain.png").note is None
