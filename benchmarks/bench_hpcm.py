"""HPCM coding speed against the official implementation, and real bytes against the likelihood estimate.

    python benchmarks/bench_hpcm.py --out benchmarks/results/hpcm.json --part speed --official .official/LIC-HPCM
    python benchmarks/bench_hpcm.py --out benchmarks/results/hpcm.json --part bpp

speed (GPU): HPCM_Base and HPCM_Large with the same random weights in this project's model and in the official
code (a copy of LIC-HPCM with its rANS extension built, kept outside the project), on one 768x512 image. Encode
and decode times include entropy coding (median of --repeats after warm-up). The network part is timed with the
entropy coder replaced by the symbols recorded from a real run (no rANS, no symbol transfers); entropy coding
alone is timed inside real runs. The round trip is checked to be exact.

bpp (CPU): the tiny model trained briefly on package photos, then real stream and file bytes against the estimate
from its likelihoods on held-out photos.

Results are merged into --out (JSON) and a Markdown table is written beside it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phase1 import codec  # noqa: E402
from phase1.entropy import RansStreamReader, rans_encode  # noqa: E402
from phase1.hpcm import build_hpcm, load_hpcm_state_dict, pad_to_multiple  # noqa: E402
from phase1.hpcm_context import context_layout  # noqa: E402

OFFICIAL_NAMES = {"hpcm_base": "HPCM_Base", "hpcm_large": "HPCM_Large"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def ms(samples):
    return round(1000 * statistics.median(samples), 2)


def bench_image(path, size, device):
    """(1, 3, H, W) in [0, 1]: a package photo (or --image) resized to `size` (W, H)."""
    from PIL import Image

    if path:
        img = Image.open(path).convert("RGB")
    else:
        import skimage.data

        img = Image.fromarray(skimage.data.stereo_motorcycle()[0])
    img = img.resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float().div(255).to(device)


# ---------------------------------------------------------------------- this project's model


def measure_ours(model, x, repeats):
    dev = x.device
    x_pad, _ = pad_to_multiple(x)
    enc = model.compress(x)
    dec = model.decompress(**enc)["x_hat"]
    ref = model(x)["x_hat"].clamp(0, 1)
    res = {"round_trip_exact": bool(torch.equal(dec, ref))}
    odd = x[:, :, :333, :500]  # padded to 512x512 and cropped back
    res["round_trip_exact_333x500"] = bool(
        torch.equal(model.decompress(**model.compress(odd))["x_hat"], model(odd)["x_hat"].clamp(0, 1))
    )
    graphs = model.use_cuda_graphs and dev.type == "cuda"
    if graphs:  # the eager coding passes must make the same bytes as the graphs
        model.use_cuda_graphs = False
        enc_eager = model.compress(x)
        res["eager_streams_equal_graph_streams"] = enc_eager["strings"] == enc["strings"]
        res["eager_decode_exact"] = bool(torch.equal(model.decompress(**enc_eager)["x_hat"], ref))
        res["encode_ms_without_graphs"] = ms(timed(lambda: model.compress(x), dev, repeats))
        res["decode_ms_without_graphs"] = ms(timed(lambda: model.decompress(**enc_eager), dev, repeats))
        model.use_cuda_graphs = True
    res["cuda_graphs"] = graphs
    res["stream_bytes"] = sum(len(s[0]) for s in enc["strings"])
    res["file_bytes"] = len(codec.encode(model, x))
    res["encode_ms"] = ms(timed(lambda: model.compress(x), dev, repeats))
    res["decode_ms"] = ms(timed(lambda: model.decompress(**enc), dev, repeats))

    # network only: the same passes with recorded symbols instead of rANS and transfers
    res["encode_network_ms"] = ms(timed(lambda: model._encode_network(x_pad), dev, repeats))
    z_sym, y_sym, _ = (t.clone() for t in model._encode_network(x_pad))
    L = context_layout(model.config.M, x_pad.shape[2] // 16, x_pad.shape[3] // 16, dev)
    parts = y_sym[0].split([len(s[0]) for s in L.steps])

    def oracle_decode():
        it = iter(parts)
        return model._decode(z_sym, lambda idx: next(it))

    res["decode_network_ms"] = ms(timed(oracle_decode, dev, repeats))
    res["encode_entropy_ms"], res["decode_entropy_ms"], res["encode_breakdown_ms"] = entropy_times(
        model, x_pad, enc, repeats
    )
    return res


def entropy_times(model, x_pad, enc, repeats):
    """Where a real run's time goes. Encode: network (replay and wait), symbol transfer, rANS, checksum.
    Decode: rANS decoding with the index/symbol transfers it needs, the GPU waited out before each."""
    dev = x_pad.device
    tz, ty = model._tables("z"), model._tables("y")
    parts = {"network": [], "transfer": [], "rans": [], "checksum": []}
    dec_t = []
    for _ in range(repeats + 2):
        t = [time.perf_counter()]
        z_sym, y_sym, y_idx = model._encode_network(x_pad)
        sync(dev)
        t.append(time.perf_counter())
        z, y, i = (a[0].cpu().numpy() for a in (z_sym, y_sym, y_idx))
        t.append(time.perf_counter())
        z_idx = np.repeat(np.arange(z.shape[0], dtype=np.int32), z[0].size)
        rans_encode(z.reshape(-1), z_idx, tz), rans_encode(y, i, ty)
        t.append(time.perf_counter())
        zlib.crc32(y.tobytes())
        t.append(time.perf_counter())
        for k, (a, b) in zip(parts, zip(t, t[1:])):
            parts[k].append(b - a)

        spent = [0.0]
        t0 = time.perf_counter()
        N, (h, w) = model.config.N, enc["shape"]
        zq = RansStreamReader(enc["strings"][1][0], tz).read(np.repeat(np.arange(N, dtype=np.int32), h * w))
        zq = torch.from_numpy(zq).to(dev).view(1, N, h, w)
        sync(dev)
        spent[0] += time.perf_counter() - t0
        reader = RansStreamReader(enc["strings"][0][0], ty)

        def read_y(idx, reader=reader, spent=spent):
            sync(dev)
            t0 = time.perf_counter()
            q = torch.from_numpy(reader.read(idx.cpu().numpy())).to(dev)
            sync(dev)
            spent[0] += time.perf_counter() - t0
            return q

        model._decode(zq, read_y)
        dec_t.append(spent[0])
    breakdown = {k: ms(v[2:]) for k, v in parts.items()}
    return round(breakdown["transfer"] + breakdown["rans"], 2), ms(dec_t[2:]), breakdown


# ---------------------------------------------------------------------- the official implementation


def official_module(root, name):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"src.models.{OFFICIAL_NAMES[name]}")


def measure_official(off, x, repeats):
    dev = x.device
    import src.entropy_models as em
    from src.models.base import BB

    res = {}
    out = off.compress(x)
    res["stream_bytes"] = sum(len(s) for s in out["strings"])
    dec = off.decompress(out["strings"], out["shape"])["x_hat"]
    ref = off(x, training=False)["x_hat"].clamp(0, 1)
    res["round_trip_max_abs_diff"] = float((dec - ref).abs().max())
    res["encode_ms"] = ms(timed(lambda: off.compress(x), dev, repeats))
    res["decode_ms"] = ms(timed(lambda: off.decompress(out["strings"], out["shape"]), dev, repeats))

    # network only: its coder calls replaced by recordings; coding tables on the CPU so that no copies remain
    saved = (BB.__dict__["compress_symbols"], BB.__dict__["decompress_symbols"], em.ubransEncoder, em.ubransDecoder)
    tables = {n: getattr(off, n) for n in ("quantized_cdf_z", "cdf_length_z", "offset_z", "quantized_cdf_y",
                                           "cdf_length_y", "offset_y")}  # fmt: skip
    recorded = []

    class NullCoder:
        def flush(self):
            return b""

        def set_stream(self, s):
            pass

    try:
        BB.compress_symbols = staticmethod(lambda symbols, *a: recorded.append(symbols.clone()))
        em.ubransEncoder = em.ubransDecoder = NullCoder
        for n, t in tables.items():
            setattr(off, n, t.cpu())
        off.compress(x)
        BB.compress_symbols = staticmethod(lambda *a: True)
        res["encode_network_ms"] = ms(timed(lambda: off.compress(x), dev, repeats))

        def oracle_decode():
            it = iter(recorded)
            BB.decompress_symbols = staticmethod(lambda indexes, *a: next(it).reshape(indexes.size()))
            return off.decompress([b"", b""], out["shape"])

        res["decode_network_ms"] = ms(timed(oracle_decode, dev, repeats))
    finally:
        BB.compress_symbols, BB.decompress_symbols, em.ubransEncoder, em.ubransDecoder = saved
        for n, t in tables.items():
            setattr(off, n, t)
    return res


def speed_part(args):
    dev = torch.device(args.device)
    x = bench_image(args.image, tuple(int(v) for v in args.size.split("x")), dev)
    result = {"image": f"{x.shape[3]}x{x.shape[2]}", "repeats": args.repeats, "device": device_name(dev)}
    for name in args.models:
        torch.manual_seed(0)
        off = None
        if args.official:
            mod = official_module(args.official, name)
            off = mod.HPCM().eval()
            sd = off.state_dict()
            off.update(torch.exp(torch.linspace(math.log(0.12), math.log(64), 60)))  # as its test.py does
            off = off.to(dev)
        else:
            sd = build_hpcm(name).state_dict()
        ours = build_hpcm(name)
        load_hpcm_state_dict(ours, sd)
        ours = ours.to(dev).eval()
        ours.update()
        with torch.no_grad():
            entry = {"ours": measure_ours(ours, x, args.repeats)}
            if off is not None:
                entry["official"] = measure_official(off, x, args.repeats)
                entry["forward_max_abs_diff_vs_official"] = float(
                    (ours(x)["x_hat"] - off(x, training=False)["x_hat"]).abs().max()
                )
                o, f = entry["ours"], entry["official"]
                entry["speedup"] = {
                    "encode": round(f["encode_ms"] / o["encode_ms"], 2),
                    "decode": round(f["decode_ms"] / o["decode_ms"], 2),
                    "encode_network": round(f["encode_network_ms"] / o["encode_network_ms"], 2),
                    "decode_network": round(f["decode_network_ms"] / o["decode_network_ms"], 2),
                }
        result[name] = entry
        print(name, json.dumps(entry), flush=True)
        del off, ours
        gc.collect()  # the model and its CUDA graphs reference each other
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------- real vs estimated bpp (tiny, CPU)


def package_photos():
    import skimage.data as d

    train = [d.astronaut(), d.coffee(), d.rocket(), d.hubble_deep_field(), d.immunohistochemistry()]
    test = {"chelsea": d.chelsea(), "motorcycle_right": d.stereo_motorcycle()[1]}
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255)  # noqa: E731
    return [to_t(a) for a in train], {k: to_t(v)[None] for k, v in test.items()}


def bpp_part(args):
    torch.manual_seed(args.seed)
    train, test = package_photos()
    model = build_hpcm("tiny").train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    losses = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        crops = []
        for _ in range(args.batch):
            img = train[int(torch.randint(len(train), (1,), generator=g))]
            i = int(torch.randint(img.shape[1] - 255, (1,), generator=g))
            j = int(torch.randint(img.shape[2] - 255, (1,), generator=g))
            crops.append(img[:, i : i + 256, j : j + 256])
        x = torch.stack(crops)
        out = model(x)
        bpp = sum(lk.log2().sum() for lk in out["likelihoods"].values()) / (-x.shape[0] * 256 * 256)
        loss = args.lmbda * 255**2 * (out["x_hat"] - x).pow(2).mean() + bpp
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} bpp {bpp.item():.4f}", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    model.update(force=True)
    images = {}
    with torch.no_grad():
        for name, x in test.items():
            n = x.shape[2] * x.shape[3]
            out = model(x)
            est = sum(-lk.log2().sum().item() for lk in out["likelihoods"].values()) / n
            enc = model.compress(x)
            dec = model.decompress(**enc)["x_hat"]
            stream = sum(len(s[0]) for s in enc["strings"]) * 8 / n
            file = len(codec.encode(model, x)) * 8 / n
            mse = float((dec - x).pow(2).mean())
            images[name] = {
                "size": f"{x.shape[3]}x{x.shape[2]}",
                "bpp_estimate": round(est, 4),
                "bpp_stream": round(stream, 4),
                "bpp_file": round(file, 4),
                "stream_over_estimate": round(stream / est, 4),
                "psnr": round(10 * math.log10(1 / mse), 2),
                "round_trip_exact": bool(torch.equal(dec, out["x_hat"].clamp(0, 1))),
            }
            print(name, images[name], flush=True)
    return {
        "model": "tiny",
        "training": {
            "steps": args.steps,
            "batch": args.batch,
            "crop": 256,
            "lmbda": args.lmbda,
            "lr": args.lr,
            "first_loss": round(losses[0], 4),
            "last_loss": round(statistics.mean(losses[-20:]), 4),
            "seconds": round(train_s, 1),
        },  # fmt: skip
        "device": device_name(torch.device("cpu")),
        "images": images,
    }


# ---------------------------------------------------------------------- output


def write_markdown(path: Path, results: dict):
    lines = ["# HPCM coding speed and real bitstreams", ""]
    sp = results.get("speed")
    if sp:
        lines += [f"Command: `{sp['command']}`", "",
                  f"{sp['device']}, one {sp['image']} image, median of {sp['repeats']} after warm-up, random weights "
                  "(the same in both implementations). Times in ms; 'network' excludes entropy coding.", "",
                  "| model | implementation | encode | decode | encode network | decode network "
                  "| encode entropy | decode entropy | stream bytes | round trip |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in ("hpcm_base", "hpcm_large"):
            if name not in sp:
                continue
            e = sp[name]
            o = e["ours"]
            lines.append(f"| {name} | this project | {o['encode_ms']} | {o['decode_ms']} | {o['encode_network_ms']} | "
                         f"{o['decode_network_ms']} | {o['encode_entropy_ms']} | {o['decode_entropy_ms']} | "
                         f"{o['stream_bytes']} | {'exact' if o['round_trip_exact'] else 'NOT exact'} |")  # fmt: skip
            if "official" in e:
                f = e["official"]
                lines.append(f"| {name} | official | {f['encode_ms']} | {f['decode_ms']} | {f['encode_network_ms']} "
                             f"| {f['decode_network_ms']} | - | - | {f['stream_bytes']} | "
                             f"max diff {f['round_trip_max_abs_diff']:.2g} |")  # fmt: skip
                s = e["speedup"]
                lines.append(f"| {name} | speed-up (official / ours) | {s['encode']}x | {s['decode']}x | "
                             f"{s['encode_network']}x | {s['decode_network']}x | | | | |")  # fmt: skip
        lines += ["", "Where this project's encode time goes (ms, medians of separately timed phases):", "",
                  "| model | network (graph replay) | symbol transfer | rANS (z and y) | checksum |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name in ("hpcm_base", "hpcm_large"):
            b = sp.get(name, {}).get("ours", {}).get("encode_breakdown_ms")
            if b:
                lines.append(f"| {name} | {b['network']} | {b['transfer']} | {b['rans']} | {b['checksum']} |")
        lines.append("")
    bp = results.get("bpp")
    if bp:
        t = bp["training"]
        lines += [f"Command: `{bp['command']}`", "",
                  f"Real bytes vs the likelihood estimate: the tiny model trained {t['steps']} steps "
                  f"(batch {t['batch']}, 256x256 crops of 5 package photos, lambda {t['lmbda']}) on {bp['device']}, "
                  "then coded held-out photos. bpp per original pixel; 'file' includes the codec header.", "",
                  "| image | size | bpp estimate | bpp stream | bpp file | stream / estimate | PSNR (dB) "
                  "| round trip |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in bp["images"].items():
            lines.append(f"| {name} | {r['size']} | {r['bpp_estimate']} | {r['bpp_stream']} | {r['bpp_file']} | "
                         f"{r['stream_over_estimate']} | {r['psnr']} | "
                         f"{'exact' if r['round_trip_exact'] else 'NOT exact'} |")  # fmt: skip
        lines.append("")
    path.write_text("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--part", choices=["speed", "bpp", "all"], default="all")
    p.add_argument("--official", default=None, help="folder of a LIC-HPCM copy with its rANS extension built")
    p.add_argument("--image", default=None, help="image for the speed test (default: a package photo)")
    p.add_argument("--size", default="768x512", help="WxH of the speed-test image")
    p.add_argument("--models", default="hpcm_base,hpcm_large")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.models = args.models.split(",")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    command = "python " + " ".join(sys.argv)
    if args.part in ("speed", "all"):
        results["speed"] = {"command": command, "torch": torch.__version__, **speed_part(args)}
    if args.part in ("bpp", "all"):
        results["bpp"] = {"command": command, "torch": torch.__version__, **bpp_part(args)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out.with_suffix(".md"), results)


if __name__ == "__main__":
    main()
