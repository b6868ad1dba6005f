"""Text for the language model: a built-in corpus of real English prose, any text file or folder, or a
Hugging Face dataset when the machine is online; tokenized into one stream per split.

The built-in corpus needs no download: the gensim wheel ships a Wikipedia sample (107 articles, ~3 MB of
prose once the markup is stripped) and a news corpus (Lee, ~360 KB). Articles are split deterministically
(every 20th to validation, the next to test), so no article is in two splits.
"""

from __future__ import annotations

import bz2
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
_WIKI_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NEWS_SAMPLE = "test/test_data/lee_background.cor"


def _gensim_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the built-in corpus needs the package 'gensim'; run `make install`")
    return Path(spec.origin).parent


def _clean_wiki(text: str) -> str:
    """Wiki text after gensim's filter_wiki -> plain prose: no quote markup, headings as lines, no blank runs."""
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)
    lines = [line.strip() for line in text.splitlines()]
    # Drop the caption/table residue that filter_wiki leaves: very short fragments between blank lines.
    kept = [line for line in lines if len(line) >= 40 or (line and line[-1] in ".:!?")]
    return "\n".join(kept)


def builtin_articles() -> list[str]:
    """The built-in corpus as a list of documents (Wikipedia articles, then news items)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    root = _gensim_dir()
    docs = []
    with bz2.open(root / _WIKI_SAMPLE) as f:
        for _title, text, _id in extract_pages(f, filter_namespaces=("0",)):
            if text.lower().startswith("#redirect"):
                continue
            cleaned = _clean_wiki(filter_wiki(text))
            if len(cleaned) > 500:
                docs.append(cleaned)
    docs += [line.strip() for line in (root / _NEWS_SAMPLE).read_text().splitlines() if line.strip()]
    return docs


def split_documents(docs: list[str], split: str) -> list[str]:
    """Deterministic split by position: every 20th document to val, the one after it to test."""
    pick = {"val": lambda i: i % 20 == 0, "test": lambda i: i % 20 == 1, "train": lambda i: i % 20 > 1}
    if split not in pick:
        raise ValueError(f"split={split!r} must be train, val or test")
    return [d for i, d in enumerate(docs) if pick[split](i)]


def read_text_source(path: str | Path, encoding_errors: str = "strict") -> list[str]:
    """A text file, or every text file under a folder (recursive, sorted), as documents.

    Text must be UTF-8: a file that is not is refused, naming the file and the byte offset, because bits per
    byte of silently altered text mean nothing. `encoding_errors="replace"` reads it anyway, with U+FFFD for
    each bad sequence, and warns with the count."""
    path = Path(path)
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"data.encoding_errors={encoding_errors!r} must be strict or replace")
    if not path.exists():
        raise FileNotFoundError(f"text path {path} does not exist")
    if path.is_file():
        files = [path]
    else:  # a folder named like a text file (notes.txt/) is no text
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"text folder {path} holds no {', '.join(sorted(TEXT_SUFFIXES))} files")
    docs = [_decode(f, encoding_errors) for f in files]
    if not any(d.strip() for d in docs):
        raise ValueError(f"text source {path} is empty")
    return docs


def _decode(file: Path, errors: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors != "replace":
            raise ValueError(
                f"text file {file} is not valid UTF-8 (byte {err.start}: {data[err.start : err.start + 4]!r}); "
                "convert it to UTF-8 (training can also read it with data.encoding_errors=replace)"
            ) from None
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    warnings.warn(f"text file {file}: {bad} invalid UTF-8 sequence(s) read as U+FFFD", stacklevel=3)
    return text


def huggingface_documents(name: str, config: str | None, split: str, field: str = "text") -> list[str]:
    """Documents of a Hugging Face dataset split (needs the `datasets` package and a network)."""
    try:
        import datasets
    except ImportError:
        raise ValueError("data.source=huggingface needs `pip install datasets` and a network connection") from None
    hf_split = {"val": "validation"}.get(split, split)
    return [row[field] for row in datasets.load_dataset(name, config, split=hf_split) if row[field].strip()]


@dataclass
class TextSplits:
    train: list[str]
    val: list[str]
    test: list[str]

    @property
    def num_bytes(self) -> dict[str, int]:
        return {s: sum(len(d.encode()) for d in getattr(self, s)) for s in ("train", "val", "test")}


def load_splits(
    source: str,
    path: str | None = None,
    hf_name: str | None = None,
    hf_config: str | None = None,
    encoding_errors: str = "strict",
) -> TextSplits:
    """builtin | file (one file or folder; split by document, or by position inside a single document) |
    huggingface."""
    if source == "builtin":
        docs = builtin_articles()
        return TextSplits(*(split_documents(docs, s) for s in ("train", "val", "test")))
    if source == "file":
        if not path:
            raise ValueError("data.source=file needs data.path=/path/to/text (a file or a folder)")
        docs = read_text_source(path, encoding_errors)
        if len(docs) < 20:  # too few documents to split by document: split the text by position instead
            text = "\n".join(docs)
            a, b = int(len(text) * 0.9), int(len(text) * 0.95)
            return TextSplits([text[:a]], [text[a:b]], [text[b:]])
        return TextSplits(*(split_documents(docs, s) for s in ("train", "val", "test")))
    if source == "huggingface":
        if not hf_name:
            raise ValueError("data.source=huggingface needs data.hf_name (e.g. wikitext)")
        return TextSplits(*(huggingface_documents(hf_name, hf_config, s) for s in ("train", "val", "test")))
    raise ValueError(f"data.source={source!r} is not one of: builtin, file, huggingface")


class TokenWindows(Dataset):
    """Windows of `seq_len + 1` tokens (inputs and shifted targets) from one token stream.

    Training: window i starts at i * seq_len plus a random offset (torch RNG, seeded per sample by
    EpochBatches), so epochs differ while resume stays exact. Evaluation (`random_offset=False`): contiguous,
    non-overlapping windows that cover the stream once."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, random_offset: bool = True, name: str = "the text"):
        if tokens.numel() < seq_len + 2:
            raise ValueError(
                f"{name} has {tokens.numel()} tokens, fewer than seq_len={seq_len} + 2: give more text or a "
                "smaller seq_len"
            )
        self.tokens, self.seq_len, self.random_offset = tokens, seq_len, random_offset
        self.count = (tokens.numel() - 1) // seq_len - (1 if random_offset else 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.seq_len
        if self.random_offset:
            start += int(torch.randint(0, self.seq_len, ()))
        window = self.tokens[start : start + self.seq_len + 1].long()
        return window[:-1], window[1:]
