"""Phase2Config: defaults, validation, round trips, presets, and every field wired into the model."""

import json
from dataclasses import fields

import pytest
import torch

from phase2.baseline import TransformerLMConfig
from phase2.bk_core_lm import Phase2IntegratedModel, create_phase2_model
from phase2.config import Phase2Config, get_phase2_preset

DEFAULTS = dict(
    ops_impl="auto",
    triton_block_size=256,
    base_decay=0.01,
    adaptive_decay=True,
    hebbian_eta=0.1,
    hebbian_dt=1.0,
    num_heads=8,
    head_dim=64,
    snr_threshold=2.0,
    snr_gamma_boost=2.0,
    snr_eta_boost=1.5,
    resonance_enabled=True,
    resonance_energy_threshold=0.1,
    use_zeta_init=True,
    zeta_embedding_trainable=False,
    vocab_size=50257,
    d_model=512,
    n_layers=6,
    n_seq=1024,
    ffn_dim=None,
    dropout=0.1,
    transformer_config=None,
)


def test_defaults():
    cfg = Phase2Config()
    for name, value in DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert cfg.validate() is cfg


@pytest.mark.parametrize(
    "name,value",
    [
        ("vocab_size", 0),
        ("d_model", -1),
        ("n_layers", 1.5),
        ("n_seq", 0),
        ("num_heads", 0),
        ("head_dim", True),
        ("chunk_size", 0),
        ("gate_interval", 0),
        ("triton_block_size", 0),
        ("ffn_dim", 0),
        ("base_decay", 0.0),
        ("hebbian_eta", -0.1),
        ("hebbian_dt", 0),
        ("snr_threshold", 0),
        ("snr_gamma_boost", 0.5),
        ("snr_eta_boost", 0.9),
        ("dropout", 1.0),
        ("resonance_energy_threshold", 1.5),
        ("gamma_adjust_rate", -0.1),
        ("adaptive_decay", "yes"),
        ("ops_impl", "naive"),
        ("tie_embeddings", 1),
        ("transformer_config", 3),
    ],
)
def test_validate_names_the_bad_field(name, value):
    with pytest.raises(ValueError, match=name):
        Phase2Config(**{name: value}).validate()


def test_transformer_config_must_match_vocab_and_width():
    with pytest.raises(ValueError, match="transformer_config.vocab_size"):
        Phase2Config(
            vocab_size=100, d_model=64, transformer_config=TransformerLMConfig(vocab_size=99, d_model=64, n_heads=4)
        ).validate()


def test_dict_round_trip_through_json():
    base = TransformerLMConfig(vocab_size=300, d_model=96, n_layers=3, n_heads=3, ffn_dim=200, max_len=128)
    cfg = Phase2Config.from_transformer(base, hebbian_eta=0.2, gamma_adjust_rate=0.05)
    back = Phase2Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.transformer_config, TransformerLMConfig)
    assert Phase2Config.from_dict(Phase2Config().to_dict()) == Phase2Config()
    with pytest.raises(ValueError, match="unknown fields"):
        Phase2Config.from_dict({"d_modle": 3})


def test_from_transformer_takes_its_shape():
    base = TransformerLMConfig(
        vocab_size=300, d_model=96, n_layers=3, n_heads=3, ffn_dim=200, max_len=128, dropout=0.05
    )
    cfg = Phase2Config.from_transformer(base)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_seq, cfg.resolved_ffn_dim, cfg.dropout) == (
        300,
        96,
        3,
        128,
        200,
        0.05,
    )
    assert (cfg.num_heads, cfg.head_dim, cfg.transformer_config, cfg.ffn_activation) == (3, 32, base, "relu")


@pytest.mark.parametrize(
    "name,d,L,T,H", [("small", 256, 4, 512, 4), ("base", 512, 6, 1024, 8), ("large", 1024, 12, 2048, 16)]
)
def test_presets(name, d, L, T, H):
    cfg = get_phase2_preset(name)
    assert (cfg.d_model, cfg.n_layers, cfg.n_seq, cfg.num_heads, cfg.head_dim) == (d, L, T, H, 64)
    assert cfg.num_heads * cfg.head_dim == cfg.d_model


def test_preset_errors_and_overrides():
    with pytest.raises(ValueError, match="unknown Phase 2 preset 'huge'.*base"):
        get_phase2_preset("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        create_phase2_model(preset="debug", d_modle=3)
    assert get_phase2_preset("debug", hebbian_eta=0.3).hebbian_eta == 0.3


def test_construction_from_keywords():
    torch.manual_seed(0)
    model = Phase2IntegratedModel(vocab_size=1000, d_model=128, n_layers=2, n_seq=64)
    assert model(torch.randint(0, 1000, (2, 16))).shape == (2, 16, 1000)
    cfg = Phase2Config(vocab_size=1000, d_model=128, n_layers=2, base_decay=0.02, hebbian_eta=0.15)
    assert create_phase2_model(config=cfg).config.hebbian_eta == 0.15


# ------------------------------------------------------------------------------ every field is wired
BASE = dict(
    vocab_size=50,
    d_model=32,
    n_layers=2,
    n_seq=64,
    num_heads=2,
    head_dim=16,
    ffn_dim=64,
    dropout=0.0,
    chunk_size=8,
    gate_interval=8,
    base_decay=0.02,
)
CHANGES = {
    "transformer_config": TransformerLMConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, ffn_dim=64, max_len=64),
    "base_decay": 0.1,
    "adaptive_decay": False,
    "hebbian_eta": 0.3,
    "hebbian_dt": 3.0,
    "num_heads": 4,
    "head_dim": 8,
    "snr_threshold": 0.3,
    "snr_gamma_boost": 4.0,
    "snr_eta_boost": 3.0,
    "resonance_enabled": False,
    "resonance_energy_threshold": 0.02,
    "use_zeta_init": False,
    "zeta_embedding_trainable": True,
    "vocab_size": 60,
    "d_model": 48,
    "n_layers": 3,
    "n_seq": 128,
    "ffn_dim": 96,
    "dropout": 0.2,
    "tie_embeddings": False,
    "gate_interval": 5,
    "gamma_adjust_rate": 0.5,
}
SAME_OUTPUTS = {"chunk_size": 3, "triton_block_size": 7, "ops_impl": "torch"}


def _signature(**overrides):
    torch.manual_seed(0)
    model = create_phase2_model(**{**BASE, **overrides})
    model.train()  # dropout acts
    ids = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    logits = model(ids)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    return shapes, trainable, logits.detach()


def test_every_field_is_covered():
    assert set(CHANGES) | set(SAME_OUTPUTS) == {f.name for f in fields(Phase2Config)}


@pytest.fixture(scope="module")
def reference():
    return _signature()


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_field_changes_the_model(name, reference):
    shapes, trainable, logits = _signature(**{name: CHANGES[name]})
    if (shapes, trainable) != reference[:2]:
        return
    diff = (logits - reference[2]).abs().max().item()
    assert diff > 1e-4 * reference[2].abs().max().item(), f"{name} does not change the outputs (max diff {diff})"


@pytest.mark.parametrize("name", sorted(SAME_OUTPUTS))
def test_field_keeps_the_outputs(name, reference):
    shapes, trainable, logits = _signature(**{name: SAME_OUTPUTS[name]})
    assert (shapes, trainable) == reference[:2]
    assert torch.allclose(logits, reference[2], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_triton_bk_path_gives_the_same_model_outputs(run_interpreted):
    """ops_impl="auto" runs the BK-Core Triton kernels (here in the interpreter) and matches ops_impl="torch";
    triton_block_size=7 makes the kernel split the 37 steps into chunks, and changes nothing either."""
    out = run_interpreted(
        "import torch; from phase2.bk_core_lm import create_phase2_model\n"
        "outs = []\n"
        "for impl, block in (('auto', 256), ('auto', 7), ('torch', 256)):\n"
        "    torch.manual_seed(0)\n"
        "    m = create_phase2_model(vocab_size=50, d_model=32, n_layers=1, n_seq=64, num_heads=2, head_dim=8,\n"
        "                            dropout=0.0, gate_interval=8, ops_impl=impl, triton_block_size=block)\n"
        "    outs.append(m(torch.arange(37)[None] % 50))\n"
        "import phase2.ops.bk_core.kernels as t; assert t.INTERPRETED\n"
        "for o in outs[:2]:\n"
        "    d = (o - outs[2]).abs().max().item(); print(d); assert d < 1e-5 * outs[2].abs().max().item()\n"
        "print('ok')\n"
    )
    assert out.strip().endswith("ok")  # both differences printed and under the bound
