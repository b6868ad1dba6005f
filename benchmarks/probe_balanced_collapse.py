"""What stalls Balanced R-D when it trains HPCM from scratch: every step of a few hundred, for
Adam and for Balanced variants side by side on the same batches, the task losses, FAMO's task weights z, the
gradient weights w_i = (z_i / D_i) / sum_j (z_j / D_j) (as the effective lambda = lambda w_D / w_R), and, every
few steps, the norms and cosine of the distortion's and the rate's gradients.

    python benchmarks/probe_balanced_collapse.py --model hpcm_base --steps 600 \
        --out benchmarks/results/balanced_collapse.json          # one GPU, the variants as parallel processes

Variants: adam; balanced (no warm-up, the reference's from-scratch recipe); balanced with the task weights
held at 0.5 (w_lr ~ 0: only the 1/(L + 1) weighting acts); balanced with a warm-up of plain D + R steps.
Every run goes through phase1.train.train(cfg) with logger=none; the probe only adds the gradient norms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

VARIANTS = {
    "adam": ["optim=adam"],
    "balanced": ["optim=balanced", "optim.warmup_steps=0"],
    "balanced_weights_held": ["optim=balanced", "optim.warmup_steps=0", "optim.w_lr=1e-12", "optim.gamma=0"],
    "balanced_warmup": ["optim=balanced"],  # optim.warmup_steps from --warmup
}


def _norm(grads) -> torch.Tensor:
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))


def probe_run(name: str, args) -> dict:
    """One variant, in its own process: train(cfg) with a hook subclass that also measures gradient norms."""
    import phase1.train as phase1_train
    from common.config import compose

    torch.set_num_threads(2)
    every = args.grad_every

    class ProbeHooks(phase1_train.CodecHooks):
        steps, measured = 0, None

        def backward(self, out):
            self.steps += 1
            if self.steps % every == 1 or every == 1:
                params = [p for p in self.model.parameters() if p.requires_grad]
                encoder = [p for p in phase1_train.unwrap(self.model).g_a.parameters()]
                g_d = torch.autograd.grad(out["distortion"], params, retain_graph=True, allow_unused=True)
                g_r = torch.autograd.grad(out["bpp_loss"], params, retain_graph=True, allow_unused=True)
                ids = {id(p) for p in encoder}
                enc_d = [g for p, g in zip(params, g_d) if id(p) in ids]
                enc_r = [g for p, g in zip(params, g_r) if id(p) in ids]
                dot = sum((a.float() * b.float()).sum() for a, b in zip(g_d, g_r) if a is not None and b is not None)
                n_d, n_r = _norm(g_d), _norm(g_r)
                self.measured = {
                    "grad_norm_distortion": float(n_d),
                    "grad_norm_rate": float(n_r),
                    "grad_cosine": float(dot / (n_d * n_r + 1e-30)),
                    "encoder_grad_norm_distortion": float(_norm(enc_d)),
                    "encoder_grad_norm_rate": float(_norm(enc_r)),
                }
            super().backward(out)

        def after_step(self, batch, out):
            extra = super().after_step(batch, out)
            if self.measured is not None:
                extra.update(self.measured)
                self.measured = None
            return extra

    phase1_train.CodecHooks = ProbeHooks
    overrides = [
        f"model={args.model}",
        *VARIANTS[name],
        f"lmbda={args.lmbda}",
        f"optim.lr={args.lr}",
        f"data.batch_size={args.batch}",
        f"data.patch_size={args.patch}",
        f"loop.max_steps={args.steps}",
        "loop.log_every=1",
        f"loop.eval_every={args.steps}",
        "loop.ckpt_every=0",
        "loop.progress=false",
        "logger=none",
        f"device={args.device}",
        f"checkpoint.dir={tempfile.mkdtemp()}",
        f"paths.output_root={tempfile.mkdtemp()}",
        "eval.real_bitstreams=false",
    ]
    if name == "balanced_warmup":
        overrides.append(f"optim.warmup_steps={args.warmup}")
    points = []
    start = time.perf_counter()
    summary = phase1_train.train(
        compose("phase1", overrides), on_log=lambda step, point: points.append({"step": step, **point})
    )
    return {
        "name": name,
        "overrides": overrides,
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "points": points,
    }


def _job(job):
    return probe_run(*job)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train/psnr", "PSNR (dB), train batch"),
        ("train/bpp_loss", "rate (bpp), train batch"),
        ("train/task_weight_distortion", "FAMO z_D"),
        ("train/effective_lambda", "effective lambda"),
        ("train/grad_norm_rate/distortion", "||grad R|| / ||grad D||"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for run in result["runs"]:
            if key == "train/grad_norm_rate/distortion":
                pts = [
                    (p["step"], p["train/grad_norm_rate"] / p["train/grad_norm_distortion"])
                    for p in run["points"]
                    if "train/grad_norm_rate" in p
                ]
            else:
                pts = [(p["step"], p[key]) for p in run["points"] if key in p]
            if pts:
                ax.plot(*zip(*pts), label=run["name"], lw=1)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        if key in ("train/effective_lambda", "train/grad_norm_rate/distortion"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hpcm_base")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lmbda", type=float, default=0.013)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps of the balanced_warmup variant")
    p.add_argument("--grad-every", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/balanced_collapse.json"))
    args = p.parse_args()
    names = args.variants.split(",")
    with ProcessPoolExecutor(len(names), mp_context=mp.get_context("spawn")) as pool:
        runs = list(pool.map(_job, [(name, args) for name in names]))
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for run in runs:
        last = [q for q in run["points"] if "train/psnr" in q][-20:]
        psnr = sum(q["train/psnr"] for q in last) / len(last)
        bpp = sum(q["train/bpp_loss"] for q in last) / len(last)
        print(
            f"{run['name']:>22}: last 20 steps PSNR {psnr:.2f} dB, bpp {bpp:.3f}; {run['seconds']:.0f} s "
            f"({run['seconds'] / args.steps * 1000:.0f} ms/step in parallel)",
            flush=True,
        )


if __name__ == "__main__":
    main()
