"""Phase 2 training, through the same entry point as `make train-phase2`.

    python examples/phase2_training.py [--steps 40] [--out outputs/examples/phase2]

A short run of the debug model on the built-in corpus (real English prose); checkpoints, training_history.json
and the final metrics land in --out. Any override of `python -m phase2.train` can be added in `overrides`.
"""

import argparse

from common.config import compose
from phase2.train import train

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--steps", type=int, default=40)
p.add_argument("--out", default="outputs/examples/phase2")
p.add_argument("--text", default=None, help="a text file or folder instead of the built-in corpus")
args = p.parse_args()

data = ["data=file", f"data.path={args.text}"] if args.text else ["data=builtin"]
overrides = [
    "model=debug",
    *data,
    "seq_len=64",
    "batch_size=8",
    f"loop.max_steps={args.steps}",
    f"loop.eval_every={args.steps}",
    "eval.max_batches=8",
    "diagnostics_every=10",
    "logger=none",
    f"checkpoint.dir={args.out}/checkpoints",
    f"paths.output_root={args.out}",
]
summary = train(compose("phase2", overrides))
print(
    f"val loss {summary['final/val/loss']:.3f}, {summary['final/val/bits_per_byte']:.3f} bits/byte "
    f"after {int(summary['global_step'])} steps; checkpoints in {args.out}/checkpoints"
)
