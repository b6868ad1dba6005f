"""What a trained Phase 2 model does on real text: Gamma per layer along a sequence, the memory's resonance
energy per mode, and its stability (fast-weight energy and its rate of change), as PNGs and
comprehensive_report.json.

    python -m phase2.diagnostics CKPT --out diagnostics/          # built-in corpus, validation split
    python -m phase2.diagnostics CKPT --text notes.txt --tokens 1024 --out diagnostics/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common.checkpoint import check_output_file, write_atomically  # noqa: E402
from common.config import positive_int, run_guarded  # noqa: E402
from common.runtime import pick_device  # noqa: E402
from phase2.evaluate import text_documents  # noqa: E402
from phase2.inference import LanguageModel, load_language_model  # noqa: E402
from phase2.tokenizer import encode_documents  # noqa: E402


@torch.no_grad()
def run_diagnostics(lm: LanguageModel, documents: list[str], tokens: int | None = None) -> dict:
    """One forward pass over the first `tokens` tokens of the text with diagnostics on."""
    if not lm.streams:
        raise ValueError("diagnostics need a Phase 2 checkpoint; this one holds the Transformer baseline")
    stream = encode_documents(lm.tokenizer, documents)
    length = min(tokens or lm.seq_len, lm.max_positions, stream.numel())
    if length < 2:
        raise ValueError("the text has fewer than 2 tokens")
    ids = stream[:length].long()[None].to(lm.device)
    _, diag = lm.model(ids, return_diagnostics=True)
    return diag


def _floats(t) -> list:
    return t.detach().float().cpu().tolist() if isinstance(t, torch.Tensor) else t


def build_report(lm: LanguageModel, diag: dict, tokens: int) -> dict:
    stats = lm.model.get_statistics()
    gamma = [g[0].float().cpu() for g in diag["gamma_values"]]  # per layer (T, H)
    layers = []
    for i, g in enumerate(gamma):
        snr = {k: v for k, v in diag["snr_stats"][i].items() if k != "snr"}
        res = {k: v for k, v in diag["resonance_info"][i].items() if k != "diag_energy"}
        stab = {k: _floats(v) for k, v in diag["stability_metrics"][i].items()}
        layers.append(
            {
                "layer": i,
                "gamma": {
                    "mean": float(g.mean()),
                    "std": float(g.std(unbiased=False)),
                    "min": float(g.min()),
                    "max": float(g.max()),
                    "per_head_mean": g.mean(0).tolist(),
                },
                "snr_stats": snr,
                "resonance_info": res,
                "stability_metrics": stab,
                "overdamping_ratio": diag["overdamping_ratio"][i],
            }
        )
    return {
        "model_config": lm.model.config.to_dict(),
        "model_statistics": {
            "num_parameters": stats["num_parameters"],
            "num_layers": stats["num_layers"],
            "block_stats": stats["block_stats"],
        },
        "checkpoint_step": lm.step,
        "tokens": tokens,
        "diagnostics": layers,
    }


PLOTS = ("gamma_per_layer.png", "resonance_energy.png", "stability.png")
REPORT = "comprehensive_report.json"


def _save(fig, path: Path) -> None:
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))  # a crash keeps the old plot
    plt.close(fig)


def plot_all(diag: dict, gate_interval: int, tokens: int, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    n = len(diag["gamma_values"])
    paths = [out / name for name in PLOTS]

    fig, ax = plt.subplots(figsize=(9, 4))
    for i, g in enumerate(diag["gamma_values"]):
        ax.plot(g[0].float().mean(-1).cpu(), label=f"layer {i}", lw=1)
    ax.set(xlabel="position (token)", ylabel="Gamma (mean over heads)", title="Forgetting rate Gamma along the text")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, paths[0])

    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        energy = diag["resonance_info"][i].get("diag_energy")
        if energy is None:
            ax.set_title(f"layer {i}: resonance off")
            ax.axis("off")
            continue
        im = ax.imshow(
            energy[0].float().cpu().T,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            extent=(0, energy.shape[1] * gate_interval, 0, energy.shape[2]),
        )
        ax.set(title=f"layer {i}", xlabel="position (token)", ylabel="head x mode" if i == 0 else None)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Share of the memory's energy per zeta mode, at each gate boundary")
    fig.tight_layout()
    _save(fig, paths[1])

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i, stab in enumerate(diag["stability_metrics"]):
        energy = stab["energy"].float().cpu()
        ends = [min((k + 1) * gate_interval, tokens) for k in range(len(energy))]  # segment ends
        top.plot(ends, energy, marker=".", label=f"layer {i}")
        if len(energy) > 1:
            bottom.plot(ends[1:], stab["dE_dt"].float().cpu(), marker=".", label=f"layer {i}")
    bottom.axhline(0.0, color="k", lw=0.8)
    top.set(ylabel="||S||_F^2", title="Fast-weight energy (Lyapunov: dE/dt <= 0 once the memory has filled)")
    bottom.set(xlabel="position (token)", ylabel="dE/dt")
    top.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phase2.diagnostics", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--text", default="builtin", help="a text file or folder, or 'builtin' (default)")
    p.add_argument("--split", default="val", help="all | train | val | test (default val)")
    p.add_argument("--tokens", type=positive_int, default=None, help="sequence length (default: the training length)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="diagnostics", help="folder for the PNGs and comprehensive_report.json")
    a = p.parse_args(argv)

    def run() -> None:
        out = Path(a.out)
        for name in (*PLOTS, REPORT):  # before the diagnostics run, not after; never over this command's inputs
            check_output_file(out / name, "--out", inputs={"checkpoint": a.checkpoint, "--text": a.text})
        lm = load_language_model(a.checkpoint, pick_device(a.device))
        diag = run_diagnostics(lm, text_documents(a.text, a.split), a.tokens)
        tokens = int(diag["gamma_values"][0].shape[1])
        paths = plot_all(diag, lm.model.config.gate_interval, tokens, out)
        report = out / REPORT
        text = json.dumps(build_report(lm, diag, tokens), indent=2) + "\n"
        write_atomically(report, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {report} and {', '.join(p.name for p in paths)} in {out} ({tokens} tokens)")

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
