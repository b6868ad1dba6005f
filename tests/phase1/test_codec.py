"""HPCM file format and CLI: round trips, checkpoint formats, image modes, and bad files of every kind."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import CheckpointError
from phase1 import codec, weights
from phase1.hpcm import build_hpcm

REPO = Path(__file__).resolve().parents[2]


def _tiny_weights(seed=0):
    torch.manual_seed(seed)
    model = build_hpcm("tiny")
    with torch.no_grad():
        model.g_a.branch[-1].weight.mul_(20)
    return model.state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("codec")
    sd = _tiny_weights()
    torch.save({"model_state_dict": sd, "config": {"model": {"name": "tiny"}, "lmbda": 0.01}}, d / "project.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, d / "official.pth.tar")
    torch.save({"model_state_dict": _tiny_weights(1), "config": {"model": {"name": "tiny"}}}, d / "other.pt")
    rng = np.random.default_rng(0)
    photo = (np.linspace(0, 255, 75)[None, :, None] * 0.6 + rng.integers(0, 90, (50, 75, 3))).astype(np.uint8)
    Image.fromarray(photo).save(d / "img.png")
    return d


def _run(args, capsys):
    rc = codec.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def encoded(files):
    """img.png encoded once with the project checkpoint (the CLI's encode path, in-process)."""
    assert codec.main(["encode", files / "img.png", files / "img.hpcm", "--checkpoint", files / "project.pt"]) == 0
    return files / "img.hpcm"


def test_cli_round_trip_matches_the_model_and_reports_whole_file_bpp(files, encoded, capsys):
    rc, out, err = _run(["decode", encoded, files / "dec.png", "--checkpoint", files / "project.pt"], capsys)
    assert rc == 0, err
    model, meta = codec.load_codec(files / "project.pt")
    assert meta["model"] == "tiny" and meta["lmbda"] == 0.01
    x, _ = codec.read_image(files / "img.png")
    ref = (model(x)["x_hat"].clamp(0, 1)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(files / "dec.png")), ref)
    # the encode report counts the whole file
    rc, out, _ = _run(["encode", files / "img.png", files / "again.hpcm", "--checkpoint", files / "project.pt"],
                      capsys)  # fmt: skip
    size = (files / "again.hpcm").stat().st_size
    assert f"{size} bytes, {8 * size / (50 * 75):.4f} bpp (whole file)" in out


def test_official_checkpoint_decodes_the_same_file(files, encoded, capsys):
    """Same weights in the official layout (plain state_dict, module. prefix, model inferred from shapes)."""
    rc, _, err = _run(["decode", encoded, files / "dec2.png", "--checkpoint", files / "official.pth.tar"], capsys)
    assert rc == 0, err


def test_load_weights_into_maps_an_official_checkpoint_for_fine_tuning(files):
    model = build_hpcm("tiny")
    weights.load_weights_into(model, files / "official.pth.tar")
    last = f"g_a.branch.{len(model.g_a.branch) - 1}.weight"
    assert torch.equal(model.g_a.branch[-1].weight, _tiny_weights()[last])
    with pytest.raises(CheckpointError, match="does not fit hpcm_base"):
        weights.load_weights_into(build_hpcm("hpcm_base"), files / "official.pth.tar")


def test_header_round_trip():
    h = codec.Header(333, 500, (8, 8), "tiny", b"12345678", "cuda", 0xDEADBEEF, codec.FLAG_GRAY)
    data = codec.pack(h, b"zz" * 4, b"yyyy" * 5)
    assert codec.unpack(data) == (h, b"zz" * 4, b"yyyy" * 5)


def _expect_error(capsys, args, pattern, out_file):
    rc, out, err = _run(args, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], err
    assert not Path(out_file).exists()  # nothing partial written
    assert not list(Path(out_file).parent.glob(f".{Path(out_file).name}.*"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[: len(d) // 2], "is truncated"),
        (lambda d: d[:10], "truncated or corrupted"),
        (lambda d: d[:-1], "is truncated"),
        (lambda d: d[:60] + bytes([d[60] ^ 0x10]) + d[61:], "checksum mismatch"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: b"\x89PNG" + d[4:], "not an HPCM file"),
        (lambda d: b"", "not an HPCM file"),
    ],
)
def test_damaged_files_give_one_line_errors_and_write_nothing(files, encoded, capsys, damage, message):
    bad = files / "bad.hpcm"
    bad.write_bytes(damage(encoded.read_bytes()))
    out = files / "never.png"
    _expect_error(capsys, ["decode", bad, out, "--checkpoint", files / "project.pt"], message, out)


def test_foreign_file_is_refused(files, capsys):
    _expect_error(capsys, ["decode", files / "img.png", files / "never.png", "--checkpoint", files / "project.pt"],
                  "not an HPCM file", files / "never.png")  # fmt: skip


def test_other_weights_are_refused(files, encoded, capsys):
    out = files / "never.png"
    _expect_error(capsys, ["decode", encoded, out, "--checkpoint", files / "other.pt"], "encoded with weights", out)


def test_bad_checkpoints_are_one_line_errors(files, capsys):
    (files / "trunc.pt").write_bytes((files / "project.pt").read_bytes()[:1000])
    (files / "text.pt").write_text("hello")
    for ckpt, msg in ((files / "trunc.pt", "is truncated"), (files / "text.pt", "is truncated or not a torch"),
                      (files / "missing.pt", "does not exist")):  # fmt: skip
        out = files / "never.hpcm"
        _expect_error(capsys, ["encode", files / "img.png", out, "--checkpoint", ckpt], f"checkpoint {ckpt} {msg}", out)


def _repack(data: bytes, **changes) -> bytes:
    header, z, y = codec.unpack(data)
    for k, v in changes.items():
        setattr(header, k, v)
    return codec.pack(header, z, y)


def test_device_type_mismatch_warns(files, encoded, capsys):
    moved = files / "moved.hpcm"
    moved.write_bytes(_repack(encoded.read_bytes(), device_type="cuda"))
    rc, _, err = _run(["decode", moved, files / "moved.png", "--checkpoint", files / "project.pt"], capsys)
    assert rc == 0 and "encoded on cuda and is decoded on cpu" in err


def test_desynchronised_decode_is_an_error_not_a_wrong_image(files, encoded, capsys):
    bad = files / "desync.hpcm"
    header, _, _ = codec.unpack(encoded.read_bytes())
    bad.write_bytes(_repack(encoded.read_bytes(), y_crc=header.y_crc ^ 1))
    out = files / "never.png"
    _expect_error(capsys, ["decode", bad, out, "--checkpoint", files / "project.pt"], "do not match", out)


def test_grayscale_and_rgba_are_converted_with_a_note(files, capsys):
    gray = files / "gray.png"
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)).save(gray)
    rgba = files / "rgba.png"
    Image.fromarray(np.full((40, 30, 4), 128, dtype=np.uint8)).save(rgba)
    for img, note in ((gray, "grayscale"), (rgba, "alpha channel")):
        rc, _, err = _run(["encode", img, files / "x.hpcm", "--checkpoint", files / "project.pt"], capsys)
        assert rc == 0 and f"note: {img} " in err and note in err
        rc, _, err = _run(["decode", files / "x.hpcm", files / "x.png", "--checkpoint", files / "project.pt"], capsys)
        assert rc == 0 and Image.open(files / "x.png").mode == "RGB" and Image.open(files / "x.png").size == (30, 40)


def test_16_bit_images_are_refused(files, capsys):
    img16 = files / "deep.png"
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(img16)
    out = files / "never.hpcm"
    _expect_error(capsys, ["encode", img16, out, "--checkpoint", files / "project.pt"], "16-bit", out)


@pytest.mark.slow
def test_python_dash_m_entry_point(files, tmp_path):
    """The documented command line, in a fresh interpreter (slow: importing compressai takes seconds)."""
    cmd = [sys.executable, "-m", "phase1.codec", "encode", files / "img.png", tmp_path / "a.hpcm",
           "--checkpoint", files / "project.pt", "--device", "cpu"]  # fmt: skip
    res = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "bpp (whole file)" in res.stdout
    data = (tmp_path / "a.hpcm").read_bytes()
    assert data[:4] == codec.MAGIC and struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_a_codec_checkpoint_with_its_cdf_tables_loads_into_a_fresh_codec():
    # evaluation calls update(), which sizes the entropy models' CDF buffers; a resume builds the codec anew,
    # with those buffers empty, and must still take the checkpoint (CompressAI's load_state_dict resizes them)
    from common.checkpoint import load_model_state

    trained = build_hpcm("tiny")
    trained.update(force=True)
    state = trained.state_dict()
    assert state["scale_table"].numel() > 0
    fresh = build_hpcm("tiny")
    assert fresh.state_dict()["scale_table"].numel() == 0
    load_model_state(fresh, state, "last.pt")
    assert torch.equal(fresh.state_dict()["scale_table"], state["scale_table"])
    wider = build_hpcm("tiny").state_dict()
    key = next(k for k, v in wider.items() if v.dim() == 4)
    wider[key] = torch.zeros(wider[key].shape[0] + 1, *wider[key].shape[1:])
    with pytest.raises(CheckpointError, match="does not fit this model: 1 shape"):
        load_model_state(fresh, wider, "wider.pt")  # a parameter of another size is still refused
