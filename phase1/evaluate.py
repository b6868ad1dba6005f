"""R-D evaluation with real bitstreams, in CompressAI's eval_model JSON format.

    python -m phase1.evaluate CKPT [CKPT ...] [--data builtin | --data DIR] [--out rd.json]
    python -m phase1.evaluate compare ANCHOR.json TEST.json [--plot rd.png] [--bootstrap 1000]

Each checkpoint is one operating point: every test image is compressed to real bytes and decoded again;
bpp counts the bytes of the entropy-coded streams (what the codec file adds on top is its small header).
Several checkpoints (one per lambda) make an R-D curve; `compare` gives BD-rate and BD-PSNR between two
curves, with a per-image bootstrap confidence interval, and draws the R-D plot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import CheckpointError, check_output_file, write_atomically
from phase1.codec import CodecError
from phase1.data import image_paths, list_images, load_rgb
from phase1.loss import bits_per_pixel, ms_ssim, psnr

MS_SSIM_MIN_SIDE = 161  # pytorch-msssim's 5 scales need at least this many pixels per side


def stream_bytes(strings) -> int:
    """Bytes in CompressAI's nested `strings` (a list per latent, a bytes object per image)."""
    if isinstance(strings, bytes | bytearray):
        return len(strings)
    return sum(stream_bytes(s) for s in strings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_image(model: nn.Module, x: torch.Tensor, real: bool = True, criterion=None) -> dict[str, float]:
    """One image (1, 3, H, W) in [0, 1]: estimated bpp from the likelihoods and, with `real`, real bpp and
    quality of the decoded image, with encode/decode times; with a `criterion`, its loss terms too."""
    device = x.device
    num_pixels = x.shape[-2] * x.shape[-1]
    out = model(x)
    metrics = {"bpp_estimate": float(bits_per_pixel(out["likelihoods"], num_pixels))}
    if criterion is not None:
        terms = criterion(out, x)
        metrics.update({k: float(terms[k]) for k in ("loss", "distortion", "bpp_loss")})
    x_hat = out["x_hat"].clamp(0, 1)
    if real:
        _sync(device)
        t0 = time.perf_counter()
        enc = model.compress(x)
        _sync(device)
        t1 = time.perf_counter()
        dec = model.decompress(**enc)  # HPCM also returns x_size (to crop the padding) and checksums
        _sync(device)
        t2 = time.perf_counter()
        x_hat = dec["x_hat"].clamp(0, 1)
        metrics.update(bpp=stream_bytes(enc["strings"]) * 8 / num_pixels, encoding_time=t1 - t0, decoding_time=t2 - t1)
    mse = torch.mean((x_hat - x) ** 2)
    metrics.update(mse=float(mse), **{"psnr-rgb": psnr(mse)})
    if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        metrics["ms-ssim-rgb"] = float(ms_ssim(x_hat, x))
    return metrics


@torch.no_grad()
def evaluate_images(
    model: nn.Module, paths: list[Path], device: torch.device, real: bool = True, criterion=None
) -> dict:
    """Per-image and mean metrics over `paths`; `model.update()` must have run when `real`."""
    model.eval()
    per_image = {}
    for path in paths:
        x, _ = load_rgb(path)
        per_image[path.name] = evaluate_image(model, x.unsqueeze(0).to(device), real=real, criterion=criterion)
    keys = sorted({k for m in per_image.values() for k in m})
    mean = {k: sum(m[k] for m in per_image.values() if k in m) / sum(k in m for m in per_image.values()) for k in keys}
    return {"mean": mean, "per_image": per_image}


def operating_point(checkpoint: str | Path, paths: list[Path], device: torch.device) -> dict:
    """Evaluate one checkpoint; the entry is CompressAI eval_model-like plus per-image lists for bootstrap."""
    from phase1.weights import load_codec

    model, meta = load_codec(checkpoint, device=device)
    model.update(force=True)
    result = evaluate_images(model, paths, device, real=True)
    names = sorted(result["per_image"])
    point = {
        "checkpoint": str(checkpoint),
        "model": meta.get("model", ""),
        "lmbda": meta.get("lmbda"),
        "optim": meta.get("optim"),
        "images": names,
        **{k: v for k, v in result["mean"].items()},
        "psnr": result["mean"]["psnr-rgb"],
        "bpp_per_image": [result["per_image"][n]["bpp"] for n in names],
        "mse_per_image": [result["per_image"][n]["mse"] for n in names],
        "psnr_per_image": [result["per_image"][n]["psnr-rgb"] for n in names],
    }
    return point


def evaluate_checkpoints(checkpoints: list[str], data: str, device: torch.device, name: str = "") -> dict:
    paths = image_paths("builtin", None, "test") if data == "builtin" else list_images(data)
    points = [operating_point(c, paths, device) for c in checkpoints]
    points.sort(key=lambda p: p["bpp"])
    metric_keys = ["psnr-rgb", "ms-ssim-rgb", "bpp", "bpp_estimate", "encoding_time", "decoding_time"]
    return {
        "name": name or (points[0]["model"] if points else ""),
        "description": f"Inference (ans), real bitstreams, {len(paths)} images from {data}",
        "results": {k: [p.get(k) for p in points] for k in metric_keys},
        "points": points,
    }


CURVE_KEYS = ("bpp", "psnr")  # each point's; the bootstrap also reads bpp_per_image and psnr/mse_per_image


def read_curve(path: str) -> list[dict]:
    """The points of an R-D curve JSON written by this module; a file that is not one is a ValueError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text file (byte {err.start} is not UTF-8)") from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        raise ValueError(f"{path} holds no 'points' list: write it with `python -m phase1.evaluate CKPT... --out`")
    for i, point in enumerate(points):
        missing = [k for k in CURVE_KEYS if not isinstance(point, dict) or not isinstance(point.get(k), (int, float))]
        if missing:
            raise ValueError(f"{path}: point {i} has no number for {', '.join(missing)}")
        bad = [k for k in CURVE_KEYS if not math.isfinite(point[k]) or (k == "bpp" and point[k] <= 0)]
        if bad:
            raise ValueError(f"{path}: point {i} has {bad[0]}={point[bad[0]]}, not a finite positive number")
    return points


def compare(anchor_json: str, test_json: str, plot: str | None, bootstrap: int) -> dict:
    """BD-rate/BD-PSNR of two curves written by this module (PSNR: mean of per-image PSNR, as CompressAI), with
    a paired per-image bootstrap interval of `bootstrap` resamples. With fewer images than
    rd.MIN_IMAGES_FOR_INTERVAL the bootstrap entry has ci_low/ci_high null and a "note" saying so: a number
    there would look like an interval without being one."""
    from phase1 import rd

    anchor, test = read_curve(anchor_json), read_curve(test_json)
    out = check_output_file(plot, "--plot", {"anchor": anchor_json, "test": test_json}) if plot else None
    low, high, fraction = rd.quality_overlap(anchor, test)
    if high <= low:
        raise ValueError(
            f"the curves of {anchor_json} and {test_json} share no PSNR range ({low:.2f} > {high:.2f} dB): "
            "BD-rate compares rates at equal quality, so it is undefined here"
        )
    summary = {
        "bd_rate_percent": rd.bd_rate(anchor, test),
        "bd_psnr_db": rd.bd_psnr(anchor, test),
        "psnr_overlap_db": [low, high],
        "psnr_overlap_fraction_of_anchor": fraction,
    }
    if bootstrap:
        for path, curve in ((anchor_json, anchor), (test_json, test)):
            if not all("bpp_per_image" in p and ({"psnr_per_image", "mse_per_image"} & p.keys()) for p in curve):
                raise ValueError(f"{path} has no per-image numbers, which the bootstrap resamples (--bootstrap 0)")
        summary["bootstrap"] = rd.bd_rate_bootstrap(anchor, test, samples=bootstrap)
    if out:
        rd.plot_rd({Path(anchor_json).stem: anchor, Path(test_json).stem: test}, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "compare":
            p = argparse.ArgumentParser(prog="python -m phase1.evaluate compare")
            p.add_argument("anchor")
            p.add_argument("test")
            p.add_argument("--plot")
            p.add_argument("--bootstrap", type=int, default=1000)
            a = p.parse_args(argv[1:])
            if a.plot:  # before the comparison, not after
                check_output_file(a.plot, "--plot", {"anchor": a.anchor, "test": a.test})
                if a.plot.rpartition(".")[2].lower() not in ("png", "pdf", "svg", "jpg", "jpeg"):
                    raise ValueError(f"--plot {a.plot}: name a .png, .pdf, .svg or .jpg file")
            print(json.dumps(compare(a.anchor, a.test, a.plot, a.bootstrap), indent=2))
            return 0
        p = argparse.ArgumentParser(prog="python -m phase1.evaluate", description=__doc__.splitlines()[0])
        p.add_argument("checkpoints", nargs="+")
        p.add_argument("--data", default="builtin", help="'builtin' (the held-out photos) or a folder of images")
        p.add_argument("--device", default="auto")
        p.add_argument("--name", default="")
        p.add_argument("--out", help="write the JSON here (default: print it)")
        a = p.parse_args(argv)
        from common.runtime import pick_device

        inputs = {f"checkpoint {c}": c for c in a.checkpoints}
        out = check_output_file(a.out, "--out", inputs) if a.out else None  # before minutes of coding, not after
        result = evaluate_checkpoints(a.checkpoints, a.data, pick_device(a.device), a.name)
        text = json.dumps(result, indent=2)
        if out:
            write_atomically(out, lambda tmp: Path(tmp).write_text(text + "\n"))
            print(f"wrote {a.out}: mean bpp {result['results']['bpp']}, PSNR {result['results']['psnr-rgb']}")
        else:
            print(text)
        return 0
    except (ValueError, FileNotFoundError, OSError, CheckpointError, CodecError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
