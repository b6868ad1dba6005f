"""Phase 2 text data and tokenizers (no model needed)."""

import pytest
import torch

from phase2.data import TokenWindows, builtin_articles, load_splits, split_documents
from phase2.tokenizer import ByteTokenizer, build_tokenizer, encode_documents, tokenizer_from_json


@pytest.fixture(scope="module")
def builtin():
    return load_splits("builtin")


def test_builtin_corpus_is_real_english_prose_over_1mb(builtin):
    sizes = builtin.num_bytes
    assert sum(sizes.values()) > 1_000_000
    assert sizes["val"] > 50_000 and sizes["test"] > 50_000
    text = " ".join(builtin.train[:20]).lower()
    for word in (" the ", " and ", " of ", " was "):
        assert text.count(word) > 50
    assert "[[" not in text and "'''" not in text  # wiki markup stripped


def test_splits_are_deterministic_and_disjoint():
    docs = [f"document {i}" for i in range(100)]
    train, val, test = (split_documents(docs, s) for s in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 100
    assert not set(train) & set(val) and not set(val) & set(test)
    assert split_documents(docs, "val") == val


def test_file_source_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello world. " * 2000)
    splits = load_splits("file", str(tmp_path / "a.txt"))
    assert splits.train and splits.val and splits.test
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits("file", str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        load_splits("file", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="data.source='s3'"):
        load_splits("s3")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Zeta zeros: ζ(½ + it) = 0 — naïve café"
    assert tok.decode(tok.encode(text)) == text
    assert tokenizer_from_json(tok.to_json()).vocab_size == 256


def test_bpe_trains_offline_round_trips_and_serializes(builtin):
    tok = build_tokenizer("bpe", builtin.train[:30], vocab_size=600)
    text = builtin.val[0][:500]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) * 0.7  # it compresses
    again = tokenizer_from_json(tok.to_json())
    assert again.encode(text) == ids and again.vocab_size == tok.vocab_size


def test_token_windows_shift_and_resume_determinism():
    stream = encode_documents(ByteTokenizer(), ["abcdefghij" * 50])
    windows = TokenWindows(stream, seq_len=16)
    x, y = windows[3]
    assert x.shape == y.shape == (16,) and torch.equal(x[1:], y[:-1])
    torch.manual_seed(0)
    a = windows[3]
    torch.manual_seed(0)
    assert torch.equal(a[0], windows[3][0])
    evaluation = TokenWindows(stream, seq_len=16, random_offset=False)
    covered = torch.cat([evaluation[i][1] for i in range(len(evaluation))])
    assert torch.equal(covered, stream[1 : 1 + len(covered)].long())


def test_wikipedia_sample_has_many_articles():
    assert len([d for d in builtin_articles() if len(d) > 5000]) > 50


def test_text_that_is_not_utf8_is_refused_naming_file_and_offset_unless_replace_is_asked(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8 \(byte 3"):
        load_splits("file", str(path))
    with pytest.warns(UserWarning, match="50 invalid UTF-8 sequence"):
        splits = load_splits("file", str(path), encoding_errors="replace")
    assert "caf\ufffd" in splits.train[0]
