"""Perplexity and bits per byte of a phase2.train checkpoint on a text.

    python -m phase2.evaluate CKPT data/book.txt                 # a text file, or a folder of them
    python -m phase2.evaluate CKPT builtin --split test          # the built-in corpus's test split
    python -m phase2.evaluate CKPT notes.txt --split val --json out.json

The text is read with the checkpoint's tokenizer into one stream (documents joined by a blank line, as in
training) and scored over contiguous, non-overlapping windows of the training length. Bits per byte divide
the nats by ln 2 and by the text's UTF-8 bytes per token, so tokenizers of different granularity compare.
`--split` picks the same deterministic split training used (train/val/test); `all` takes the whole text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.checkpoint import check_output_file, write_atomically
from common.config import positive_int, run_guarded
from common.runtime import pick_device
from phase2.data import TokenWindows, load_splits, read_text_source
from phase2.inference import LanguageModel, load_language_model
from phase2.tokenizer import encode_documents
from phase2.train import evaluate_nll, nll_scores

SPLITS = ("all", "train", "val", "test")


def text_documents(source: str, split: str = "all") -> list[str]:
    """`builtin` (the built-in corpus) or a text file/folder, whole or one of training's splits."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
    if source == "builtin":
        splits = load_splits("builtin")
        return splits.train + splits.val + splits.test if split == "all" else getattr(splits, split)
    if split == "all":
        return read_text_source(source)
    return getattr(load_splits("file", source), split)


def evaluate_text(
    lm: LanguageModel, documents: list[str], seq_len: int | None = None, batch_size: int = 8
) -> dict[str, float]:
    seq_len = seq_len or lm.seq_len
    if seq_len > lm.max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the model's {lm.max_positions} positions")
    stream = encode_documents(lm.tokenizer, documents)
    windows = TokenWindows(stream, seq_len, random_offset=False)
    nll, count = evaluate_nll(lm.model, windows, batch_size, lm.device)
    bytes_per_token = sum(len(d.encode()) for d in documents) / stream.numel()
    return {
        **nll_scores(nll / count, bytes_per_token),
        "tokens_scored": count,
        "seq_len": seq_len,
        "bytes_per_token": bytes_per_token,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phase2.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("text", help="a text file, a folder of text files, or 'builtin'")
    p.add_argument("--split", default="all", choices=SPLITS)
    p.add_argument("--seq-len", type=positive_int, default=None, help="window length (default: the training length)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)

    def run() -> None:
        inputs = {"checkpoint": a.checkpoint, "text": a.text}
        out = check_output_file(a.json, "--json", inputs) if a.json else None  # before the evaluation, not after
        lm = load_language_model(a.checkpoint, pick_device(a.device))
        result = evaluate_text(lm, text_documents(a.text, a.split), a.seq_len, a.batch_size)
        result.update(checkpoint=str(a.checkpoint), text=a.text, split=a.split, step=lm.step)
        print(
            f"{a.text} ({a.split}): loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}, "
            f"{result['bits_per_byte']:.4f} bits/byte over {result['tokens_scored']:,} tokens"
        )
        if out:
            write_atomically(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
