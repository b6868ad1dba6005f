"""HPCM file format and command line.

    python -m phase1.codec encode IMG OUT --checkpoint CKPT [--model NAME] [--device auto|cpu|cuda]
    python -m phase1.codec decode OUT IMG --checkpoint CKPT [--device ...]

File layout (little-endian), then a CRC-32 of everything before it:
    b"HPCM" | version u8 | flags u8 (1: source was grayscale, 2: source had alpha) | height u32 | width u32
    | z height u16 | z width u16 | model name (u8 length + UTF-8) | weights hash (8 bytes)
    | encoding device type (u8 length + ASCII) | y symbols CRC-32 u32 | z stream length u32 | y stream length u32
    | z stream | y stream | CRC-32 u32
The weights hash names the exact weights and coding tables needed to decode. Entropy coding is not bit-exact
across device types (the table index of each symbol comes from floating-point scales), so decoding on another
device type warns, and the y-symbol CRC turns a desynchronised decode into an error instead of a wrong image.
Bad input of any kind gives a one-line error; outputs are written atomically, never partially.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import CheckpointError, tensor_records, write_atomically
from common.runtime import pick_device
from phase1.data import UnsupportedImageError, read_rgb
from phase1.hpcm import HPCM, canonical_name
from phase1.weights import load_codec

MAGIC = b"HPCM"
VERSION = 1
FLAG_GRAY, FLAG_ALPHA = 1, 2
_FIXED = struct.Struct("<4sBBIIHH")
_TAIL = struct.Struct("<III")  # y symbols CRC, z length, y length
MAX_SIDE = 1 << 16


class CodecError(Exception):
    """A user-facing failure; the message is one line naming the file and what to do."""


@dataclass
class Header:
    height: int
    width: int
    z_shape: tuple
    model: str
    weights_hash: bytes
    device_type: str
    y_crc: int
    flags: int = 0


# ---------------------------------------------------------------------- bytes <-> (header, streams)


def pack(header: Header, z_stream: bytes, y_stream: bytes) -> bytes:
    name, dev = header.model.encode(), header.device_type.encode()
    body = b"".join([
        _FIXED.pack(MAGIC, VERSION, header.flags, header.height, header.width, *header.z_shape),
        bytes([len(name)]), name, header.weights_hash, bytes([len(dev)]), dev,
        _TAIL.pack(header.y_crc, len(z_stream), len(y_stream)), z_stream, y_stream,
    ])  # fmt: skip
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes, where: str = "input") -> tuple[Header, bytes, bytes]:
    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError(f"{where} is not an HPCM file (no HPCM signature)")
    try:
        magic, version, flags, h, w, zh, zw = _FIXED.unpack_from(data, 0)
        off = _FIXED.size
        name, off = _read_str(data, off)
        weights_hash, off = data[off : off + 8], off + 8
        dev, off = _read_str(data, off)
        y_crc, n_z, n_y = _TAIL.unpack_from(data, off)
        off += _TAIL.size
    except (struct.error, IndexError, UnicodeDecodeError):
        raise CodecError(f"{where} is truncated or corrupted (incomplete header)") from None
    if version != VERSION:
        raise CodecError(f"{where} has format version {version}; this decoder reads version {VERSION}")
    expected = off + n_z + n_y + 4
    if len(data) < expected:
        raise CodecError(f"{where} is truncated ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise CodecError(f"{where} is corrupted ({len(data) - expected} unexpected trailing bytes)")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CodecError(f"{where} is corrupted (checksum mismatch)")
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or (zh, zw) != (-(-h // 256) * 4, -(-w // 256) * 4):
        raise CodecError(f"{where} is corrupted (inconsistent image size {w}x{h} and latent size {zw}x{zh})")
    z_stream = data[off : off + n_z]
    y_stream = data[off + n_z : off + n_z + n_y]
    return Header(h, w, (zh, zw), name, weights_hash, dev, y_crc, flags), z_stream, y_stream


def _read_str(data: bytes, off: int):
    n = data[off]
    if off + 1 + n > len(data):
        raise IndexError
    return data[off + 1 : off + 1 + n].decode(), off + 1 + n


# ---------------------------------------------------------------------- model, weights, images


def weights_hash(model: HPCM) -> bytes:
    """8-byte BLAKE2b of all weights and coding tables (name, dtype, shape, bytes; sorted by name)."""
    h = hashlib.blake2b(digest_size=8)
    for header, data in tensor_records(model.state_dict()):
        h.update(header)
        h.update(data)
    return h.digest()


def read_image(path: str | Path) -> tuple[torch.Tensor, int]:
    """-> ((1, 3, H, W) float in [0, 1], flags), by phase 1's one image reader; conversions get a note."""
    try:
        image = read_rgb(path)
    except UnsupportedImageError as err:
        raise CodecError(str(err)) from None
    if image.note:
        print(f"note: {path} {image.note}", file=sys.stderr)
    return image.pixels[None], (FLAG_GRAY if image.gray else 0) | (FLAG_ALPHA if image.alpha else 0)


def write_atomic(path: str | Path, write) -> None:
    """`write(temporary path)` fills a file next to `path`, which then replaces it in one rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CodecError(f"output folder {path.parent} does not exist")
    if path.is_dir():
        raise CodecError(f"output {path} is a folder")
    write_atomically(path, write)


# ---------------------------------------------------------------------- encode / decode


def check_codable(h: int, w: int, where: str = "the image") -> None:
    """The header holds each side in 16 bits (1 to 65,536): a larger image would give a file nothing decodes."""
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise CodecError(f"{where} is {w}x{h}: each side must be 1 to {MAX_SIDE} pixels to be coded")


def encode(model: HPCM, x: torch.Tensor, flags: int = 0, model_name: str | None = None) -> bytes:
    """(1, 3, H, W) image in [0, 1] -> file bytes."""
    check_codable(*x.shape[2:])
    dev = model.scales_hyper.device
    out = model.compress(x.to(dev))
    (y_stream,), (z_stream,) = out["strings"]
    h, w = out["x_size"]
    header = Header(h, w, out["shape"], model_name or model.config.name, weights_hash(model), dev.type,
                    out["checksums"][0], flags)  # fmt: skip
    return pack(header, z_stream, y_stream)


def decode(model: HPCM, data: bytes, where: str = "input") -> torch.Tensor:
    """File bytes -> (1, 3, H, W) reconstruction in [0, 1]."""
    header, z_stream, y_stream = unpack(data, where)
    if canonical_name(header.model) != canonical_name(model.config.name):
        raise CodecError(f"{where} was encoded with {header.model}, not {model.config.name}: use its checkpoint")
    if header.weights_hash != weights_hash(model):
        raise CodecError(
            f"{where} was encoded with weights {header.weights_hash.hex()}, this checkpoint has "
            f"{weights_hash(model).hex()}: decode with the checkpoint that encoded it"
        )
    dev = model.scales_hyper.device.type
    if header.device_type != dev:
        print(f"warning: {where} was encoded on {header.device_type} and is decoded on {dev}; entropy coding is "
              "not bit-exact across device types and may fail", file=sys.stderr)  # fmt: skip
    try:
        out = model.decompress([[y_stream], [z_stream]], header.z_shape, (header.height, header.width),
                               checksums=[header.y_crc])  # fmt: skip
    except RuntimeError as err:
        raise CodecError(f"{where} could not be decoded: {str(err).splitlines()[0]}") from None
    return out["x_hat"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m phase1.codec", description="HPCM image codec")
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd, a, b in (("encode", "image", "output"), ("decode", "input", "image")):
        s = sub.add_parser(cmd)
        s.add_argument(a)
        s.add_argument(b)
        s.add_argument("--checkpoint", required=True, help="project checkpoint or official HPCM state_dict")
        s.add_argument("--model", default=None, help="hpcm_base | hpcm_large | tiny (default: from checkpoint)")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    args = p.parse_args(None if argv is None else [str(a) for a in argv])
    try:
        return _run(args)
    except (CodecError, CheckpointError, ValueError, OSError) as err:  # OSError: paths, permissions, full disk
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2  # the user's input, as for every command of the project
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


def _run(args) -> int:
    source, target = (args.image, args.output) if args.cmd == "encode" else (args.input, args.image)
    if Path(source).resolve() == Path(target).resolve():
        raise CodecError(f"output {target} is the input itself: give another output path")
    if args.checkpoint and Path(args.checkpoint).resolve() == Path(target).resolve():
        raise CodecError(f"output {target} is the checkpoint: writing it would destroy the weights")
    if Path(source).is_dir():
        raise CodecError(f"input {source} is a folder, not a file")
    device = pick_device(args.device)
    if args.cmd == "encode":
        x, flags = read_image(args.image)
        check_codable(*x.shape[2:], where=f"input {args.image}")
        model, _ = load_codec(args.checkpoint, args.model, device)
        t = time.perf_counter()
        data = encode(model, x, flags)
        dt = time.perf_counter() - t
        write_atomic(args.output, lambda tmp: Path(tmp).write_bytes(data))
        h, w = x.shape[2:]
        print(f"{args.output}: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp (whole file), {w}x{h}, "
              f"encoded in {dt:.2f} s on {device}")  # fmt: skip
    else:
        src = Path(args.input)
        if not src.is_file():
            raise CodecError(f"input {src} does not exist")
        data = src.read_bytes()
        unpack(data, str(src))  # refuse a bad file before loading any weights
        model, _ = load_codec(args.checkpoint, args.model, device)
        t = time.perf_counter()
        x_hat = decode(model, data, str(src))
        dt = time.perf_counter() - t
        _save_image(args.image, x_hat)
        print(f"{args.image}: {x_hat.shape[3]}x{x_hat.shape[2]}, decoded in {dt:.2f} s on {device}")
    return 0


def _save_image(path, x_hat):
    from PIL import Image

    arr = (x_hat[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise CodecError(f"output {path}: unknown image extension; use .png")

    def save(tmp: str) -> None:
        try:
            Image.fromarray(arr).save(tmp, format=fmt)
        except (OSError, ValueError) as err:
            if getattr(err, "errno", None) is not None:  # the file system's (full disk, permissions): not the format's
                raise
            raise CodecError(f"output {path}: {fmt} cannot hold an RGB image ({err}); use .png") from None

    write_atomic(path, save)


if __name__ == "__main__":
    sys.exit(main())
