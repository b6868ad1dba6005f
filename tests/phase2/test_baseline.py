"""The baselines (the Transformer, encoder-decoder and decoder-only, and Transformer++) and the Transformer ->
Phase 2 conversion."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.config import compose
from phase2.baseline import (
    MultiHeadAttention,
    Transformer,
    TransformerLM,
    TransformerLMConfig,
    TransformerPP,
    TransformerPPConfig,
    apply_rope,
    create_look_ahead_mask,
    create_masks,
    create_padding_mask,
    greedy_decode,
    rope_angles,
)
from phase2.config import Phase2Config
from phase2.convert import convert_phase1_to_phase2, convert_transformer_to_phase2
from phase2.factory import build_model
from phase2.layers import sinusoidal_table
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
    model = convert_transformer_to_phase2(base)
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
    assert model.config.transformer_config == base.config and model.config.ffn_activation == "relu"
    assert model(torch.randint(0, 40, (2, 10))).shape == (2, 10, 40)


def test_conversion_freezes_only_the_copied_weights():
    model = convert_transformer_to_phase2(_baseline(), freeze_copied_weights=True)
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert frozen == set(model.conversion["copied"])
    assert any(p.requires_grad for n, p in model.named_parameters() if "memory" in n)


def test_conversion_skips_and_reports():
    base = _baseline()
    cfg = Phase2Config(
        vocab_size=40, d_model=32, n_layers=3, n_seq=48, num_heads=2, head_dim=16, ffn_dim=80, tie_embeddings=True
    )
    model = convert_transformer_to_phase2(base, cfg)
    skipped = dict(model.conversion["skipped"])
    assert "shape (64, 32) in the Transformer" in skipped["blocks.0.ffn.fc1.weight"]
    assert "tie_embeddings" in skipped["head.weight"]
    assert "blocks.1.ln1.weight" in model.conversion["copied"]
    none = convert_transformer_to_phase2(base, copy_compatible_weights=False)
    assert none.conversion["copied"] == []
    with pytest.raises(ValueError, match="transformer_config.vocab_size"):
        convert_transformer_to_phase2(base, Phase2Config(vocab_size=41, d_model=32))
    with pytest.raises(ValueError, match="TransformerLM"):
        convert_transformer_to_phase2(torch.nn.Linear(2, 2))


def test_the_original_name_and_keywords_still_convert():
    new = convert_transformer_to_phase2(_baseline(), freeze_copied_weights=True)
    old = convert_phase1_to_phase2(_baseline(), freeze_phase1_weights=True)
    assert old.conversion == new.conversion
    for (name, a), b in zip(old.named_parameters(), new.parameters()):
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad, name


# ---------------------------------------------------------------------------------------- Transformer++
def _pp(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, d_model=32, n_layers=2, n_heads=4, ffn_dim=48, max_len=64)
    return TransformerPP(TransformerPPConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("s", [0, 5, 11])
def test_transformer_pp_is_causal(s):
    model = _pp().eval()
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = model(ids)
    ids[:, s] = (ids[:, s] + 1) % 40
    out = model(ids)
    assert torch.allclose(out[:, :s], ref[:, :s], atol=1e-6)  # a later token changes nothing before it
    assert not torch.allclose(out[:, s], ref[:, s])
    with pytest.raises(ValueError, match="max_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_rope_scores_depend_on_the_position_difference_only():
    torch.manual_seed(0)
    T, d = 24, 16
    q, k = torch.randn(d).expand(T, d), torch.randn(d).expand(T, d)  # the same query and key at every position
    cos, sin = rope_angles(T, d, 10000.0)
    scores = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).T  # (query position, key position)
    for shift in (1, 5, 13):
        assert torch.allclose(scores[shift:, shift:], scores[:-shift, :-shift], atol=1e-4)
    assert not torch.allclose(scores[0, :-1], scores[0, 1:])  # and they do change with the difference
    assert torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))  # a rotation: norms kept


def test_transformer_pp_has_no_biases_and_no_dropout():
    model = _pp()
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert TransformerPPConfig(d_model=256).hidden_dim == 688  # 8/3 * 256, rounded up to a multiple of 16
    with pytest.raises(ValueError, match="odd"):
        TransformerPPConfig(d_model=36, n_heads=4).validate()


def test_tied_embeddings_share_storage_when_on():
    tied, untied = _pp(tie_embeddings=True), _pp(tie_embeddings=False)
    assert tied.head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 40 * 32


@pytest.mark.parametrize("vocab_size", [256, 4096])
def test_transformer_pp_yaml_matches_small_in_parameters(vocab_size):
    def count(name):
        model = build_model(compose("phase2", [f"model={name}"]).model, vocab_size=vocab_size, seq_len=256)
        return sum(p.numel() for p in model.parameters())

    pp, small = count("transformer_pp"), count("small")
    assert abs(pp / small - 1) < 0.05, (pp, small)


def test_transformer_pp_overfits_a_tiny_batch():
    model = _pp().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 40, (4, 17), generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
