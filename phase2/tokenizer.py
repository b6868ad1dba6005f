"""Tokenizers, saved inside checkpoints as JSON text so a checkpoint is self-contained.

- `bytes`: UTF-8 bytes, vocabulary 256. Keeps the output layer small, so a comparison of sequence mixers is
  not hidden by the embedding and head.
- `bpe`: byte-level BPE trained offline on the training split with the `tokenizers` library.
Bits per byte (val/bits_per_byte) is comparable across both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch


class ByteTokenizer:
    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind})


@dataclass
class BPETokenizer:
    backend: object  # tokenizers.Tokenizer
    kind: str = "bpe"

    @classmethod
    def train(cls, documents: list[str], vocab_size: int = 4096) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(documents, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": json.loads(self.backend.to_str())})


def tokenizer_from_json(text: str):
    spec = json.loads(text)
    if spec["kind"] == "bytes":
        return ByteTokenizer()
    if spec["kind"] == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(json.dumps(spec["tokenizer"])))
    raise ValueError(f"unknown tokenizer kind {spec['kind']!r} in checkpoint")


def build_tokenizer(kind: str, train_documents: list[str], vocab_size: int = 4096):
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(train_documents, vocab_size)
    raise ValueError(f"tokenizer.kind={kind!r} is not one of: bytes, bpe")


def encode_documents(tokenizer, documents: list[str]) -> torch.Tensor:
    """One stream for a split: documents joined by a blank line (a separator every tokenizer can spell)."""
    ids = tokenizer.encode("\n\n".join(documents))
    return torch.tensor(ids, dtype=torch.int32 if tokenizer.vocab_size > 32767 else torch.int16)
