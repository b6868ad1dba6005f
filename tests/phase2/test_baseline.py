"""Seed 002's Transformer (encoder-decoder and decoder-only) and the Phase 1 -> Phase 2 conversion."""

import math

import pytest
import torch

from phase2.baseline import (
    MultiHeadAttention,
    Transformer,
    TransformerLM,
    TransformerLMConfig,
    create_look_ahead_mask,
    create_masks,
    create_padding_mask,
    greedy_decode,
    sinusoidal_table,
)
from phase2.config import Phase2Config
from phase2.convert import convert_phase1_to_phase2
from phase2.zeta import zeta_ratios


def test_masks():
    src = torch.tensor([[5, 6, 0, 0]])
    tgt = torch.tensor([[9, 3, 4, 0]])
    src_mask, tgt_mask = create_masks(src, tgt, pad_idx=0)
    assert src_mask.shape == (1, 1, 1, 4) and src_mask.tolist() == [[[[True, True, False, False]]]]
    assert tgt_mask.shape == (1, 1, 4, 4)
    assert torch.equal(tgt_mask[0, 0], torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]).bool())
    assert torch.equal(create_look_ahead_mask(3)[0, 0], torch.ones(3, 3).tril().bool())
    assert torch.equal(create_padding_mask(src), src_mask)


def test_sinusoidal_table():
    pe = sinusoidal_table(50, 8)
    assert pe[0, 1] == 1.0 and pe[0, 0] == 0.0
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)), abs=1e-6)


def test_attention_is_softmax_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    mask = create_look_ahead_mask(5)
    out = mha(x, x, x, mask)
    heads = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)  # noqa: E731
    q, k, v = heads(mha.q(x)), heads(mha.k(x)), heads(mha.v(x))
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~mask, float("-inf"))
    ref = mha.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(out, ref, atol=1e-6)


def test_encoder_decoder_shapes_and_greedy_decode():
    torch.manual_seed(0)
    model = Transformer(
        src_vocab_size=11, tgt_vocab_size=13, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=12, dropout=0.1
    )
    src = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    tgt = torch.tensor([[11, 1, 2, 3], [11, 4, 5, 12]])
    src_mask, tgt_mask = create_masks(src, tgt)
    assert model(src, tgt, src_mask, tgt_mask).shape == (2, 4, 13)
    memory = model.encode(src, src_mask)
    assert memory.shape == (2, 4, 32) and model.decode(tgt, memory, src_mask, tgt_mask).shape == (2, 4, 32)
    ys = greedy_decode(model, src, src_mask, max_len=6, start_symbol=11, end_symbol=12)
    assert ys.shape[0] == 2 and ys.shape[1] <= 7 and (ys[:, 0] == 11).all()
    one = greedy_decode(model, src[:1], src_mask[:1], max_len=6, start_symbol=11, end_symbol=12)
    assert torch.equal(one[0, : one.shape[1]], ys[0, : one.shape[1]])  # batching changes nothing


def test_decoder_only_lm_is_causal():
    torch.manual_seed(0)
    lm = TransformerLM(
        TransformerLMConfig(vocab_size=20, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_len=16)
    ).eval()
    ids = torch.randint(0, 20, (2, 12))
    ref = lm(ids)
    ids[:, 6] = (ids[:, 6] + 1) % 20
    out = lm(ids)
    assert torch.allclose(out[:, :6], ref[:, :6], atol=1e-6) and not torch.allclose(out[:, 6], ref[:, 6])
    with pytest.raises(ValueError, match="max_len=16"):
        lm(torch.zeros(1, 17, dtype=torch.long))


def test_lm_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        TransformerLMConfig(d_model=30, n_heads=4).validate()
    with pytest.raises(ValueError, match="activation"):
        TransformerLMConfig(activation="tanh").validate()


# ------------------------------------------------------------------------------------------ conversion
def _baseline(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=2, ffn_dim=64, max_len=48)
    return TransformerLM(TransformerLMConfig(**{**cfg, **kw}))


def test_conversion_copies_what_it_says():
    base = _baseline()
    model = convert_phase1_to_phase2(base)
    p1 = dict(base.named_parameters())
    p2 = dict(model.named_parameters(remove_duplicate=False))
    expected = ["tok_emb.weight", "head.weight"] + [
        f"blocks.{i}.{m}.{leaf}"
        for i in range(2)
        for m in ("ln1", "ln2", "ffn.fc1", "ffn.fc2")
        for leaf in ("weight", "bias")
    ]
    assert sorted(model.conversion["copied"]) == sorted(expected)
    assert torch.equal(p2["tok_emb.weight"], p1["embed.tok.weight"])
    assert torch.equal(p2["head.weight"], p1["fc_out.weight"])
    for i in range(2):
        assert torch.equal(p2[f"blocks.{i}.ffn.fc1.weight"], p1[f"blocks.{i}.ffn.fc1.weight"])
        assert torch.equal(p2[f"blocks.{i}.ln1.weight"], p1[f"blocks.{i}.norm1.weight"])
        assert torch.equal(p2[f"blocks.{i}.ln2.bias"], p1[f"blocks.{i}.norm2.bias"])
    # the new parts are zeta-initialised: per-head forgetting rates base_decay * gamma_h / gamma_1
    gammas = model.get_statistics()["block_stats"][0]["gamma_per_head"]
    assert gammas == pytest.approx((model.config.base_decay * zeta_ratios(2)).tolist(), rel=1e-5)
    assert model.config.phase1_config == base.config and model.config.ffn_activation == "relu"
    assert model(torch.randint(0, 40, (2, 10))).shape == (2, 10, 40)


def test_conversion_freezes_only_the_copied_weights():
    model = convert_phase1_to_phase2(_baseline(), freeze_phase1_weights=True)
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert frozen == set(model.conversion["copied"])
    assert any(p.requires_grad for n, p in model.named_parameters() if "memory" in n)


def test_conversion_skips_and_reports():
    base = _baseline()
    cfg = Phase2Config(
        vocab_size=40, d_model=32, n_layers=3, n_seq=48, num_heads=2, head_dim=16, ffn_dim=80, tie_embeddings=True
    )
    model = convert_phase1_to_phase2(base, cfg)
    skipped = dict(model.conversion["skipped"])
    assert "shape (64, 32) in Phase 1" in skipped["blocks.0.ffn.fc1.weight"]
    assert "tie_embeddings" in skipped["head.weight"]
    assert "blocks.1.ln1.weight" in model.conversion["copied"]
    none = convert_phase1_to_phase2(base, copy_compatible_weights=False)
    assert none.conversion["copied"] == []
    with pytest.raises(ValueError, match="phase1_config.vocab_size"):
        convert_phase1_to_phase2(base, Phase2Config(vocab_size=41, d_model=32))
    with pytest.raises(ValueError, match="TransformerLM"):
        convert_phase1_to_phase2(torch.nn.Linear(2, 2))
