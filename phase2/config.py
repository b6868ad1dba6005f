"""Phase2Config: every knob of the Breath-of-Life language model, its presets, and checks.

    config = get_phase2_preset("base")
    config = Phase2Config(vocab_size=1000, d_model=128, n_layers=2, base_decay=0.02, hebbian_eta=0.15)
    config = Phase2Config.from_transformer(transformer_lm_config)   # same width/depth as the baseline
    Phase2Config.from_dict(config.to_dict()) == config

Every field changes the model except the implementation choices that must not change its outputs
(chunk_size, ops_impl, triton_block_size); tests/phase2/test_config.py flips each one to hold that true.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from phase2.baseline import TransformerLMConfig
from phase2.layers import ACTIVATIONS
from phase2.ops.impls import check_impl


@dataclass
class Phase2Config:
    # --- Conversion: the baseline Transformer LM the copied weights come from (phase2/convert.py), or None.
    # When set, the copied modules keep its behaviour: the FFN uses its activation and the token embedding
    # its sqrt(d_model) scale, so they compute in Phase 2 what they computed in the Transformer.
    transformer_config: TransformerLMConfig | None = None

    # --- Implementation choices of the ops (phase2/ops), outputs do not depend on them
    ops_impl: str = "auto"  # BK-Core, Hebbian memory and gate scan: "auto" (Triton on CUDA, or under
    # TRITON_INTERPRET=1, where the kernels take the shapes; else PyTorch), "torch", or "triton" (kernels or an error)
    triton_block_size: int = 256  # least time steps one BK-Core Triton program scans before its chunk
    # maps are combined (the kernel splits long chains into chunks of at least this many steps)

    # --- Non-Hermitian potential: a_t = V_t - i*Gamma_t per head, Gamma > 0 is the forgetting rate
    base_decay: float = 0.01  # Gamma at initialisation (per head spread by the zeta zeros when use_zeta_init)
    adaptive_decay: bool = True  # Gamma depends on the input token; False: one learned Gamma per head

    # --- Dissipative Hebbian fast weights: S_t = exp(-Gamma_t * dt) S_{t-1} + eta_t k_t v_t^T, o_t = q_t S_t
    hebbian_eta: float = 0.1  # write strength
    hebbian_dt: float = 1.0  # time step: the decay per token is Gamma * dt
    num_heads: int = 8
    head_dim: int = 64  # num_heads * head_dim is the memory's width; it need not equal d_model

    # --- SNR memory filter, evaluated on the memory state every gate_interval tokens: SNR = sigma_1^2 /
    # (||S||_F^2 - sigma_1^2). Below the threshold the memory is cluttered: Gamma is multiplied by up to
    # snr_gamma_boost (forget faster); above it eta is multiplied by up to snr_eta_boost (write harder).
    snr_threshold: float = 2.0
    snr_gamma_boost: float = 2.0
    snr_eta_boost: float = 1.5

    # --- Memory resonance: the share of the memory's energy in each zeta-basis mode; modes above the
    # threshold (a fraction of ||S||_F^2) resonate, and writes of keys into them are amplified
    resonance_enabled: bool = True
    resonance_energy_threshold: float = 0.1

    # --- Zeta initialisation: positional table at frequencies gamma_1/gamma_n of the Riemann zeta zeros,
    # per-head forgetting rates and BK-Core energies spread by the zeros, projections with a zeta spectrum
    use_zeta_init: bool = True
    zeta_embedding_trainable: bool = False  # the positional table is a parameter instead of a fixed buffer

    # --- Model architecture
    vocab_size: int = 50257
    d_model: int = 512
    n_layers: int = 6
    n_seq: int = 1024  # longest sequence (positions of the table), streaming included
    ffn_dim: int | None = None  # None: 4 * d_model (or the Transformer's FFN width when transformer_config is set)
    dropout: float = 0.1
    tie_embeddings: bool = True  # output head shares the token embedding matrix

    # --- Memory schedule
    chunk_size: int = 64  # compute chunk of the parallel (training) form; outputs do not depend on it
    gate_interval: int = 64  # tokens between gate updates (SNR filter, resonance, Gamma adjustment), counted
    # from the first token of the stream: a model hyper-parameter, unlike chunk_size
    gamma_adjust_rate: float = 0.01  # Lyapunov remedy: when ||S||_F^2 rose over the last gate interval,
    # Gamma is multiplied by (1 + rate); when it fell, relaxed by (1 - rate) down to the learned Gamma

    def __post_init__(self):
        if isinstance(self.transformer_config, dict):
            self.transformer_config = TransformerLMConfig.from_dict(self.transformer_config)

    @property
    def resolved_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return self.transformer_config.ffn_dim if self.transformer_config is not None else 4 * self.d_model

    @property
    def ffn_activation(self) -> str:
        return self.transformer_config.activation if self.transformer_config is not None else "gelu"

    def validate(self) -> Phase2Config:
        """Raise ValueError naming the first bad field; returns self so calls chain."""
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_seq",
            "num_heads",
            "head_dim",
            "chunk_size",
            "gate_interval",
            "triton_block_size",
        ):
            _positive_int(self, name)
        if self.ffn_dim is not None:
            _positive_int(self, "ffn_dim")
        for name in ("base_decay", "hebbian_eta", "hebbian_dt", "snr_threshold"):
            _positive(self, name)
        for name in ("snr_gamma_boost", "snr_eta_boost"):
            if _number(self, name) < 1.0:
                raise ValueError(
                    f"Phase2Config.{name}={getattr(self, name)!r}: a boost must be >= 1 (1 switches it off)"
                )
        if not 0.0 <= _number(self, "dropout") < 1.0:
            raise ValueError(f"Phase2Config.dropout={self.dropout!r}: must be in [0, 1)")
        if not 0.0 < _number(self, "resonance_energy_threshold") < 1.0:
            raise ValueError(
                f"Phase2Config.resonance_energy_threshold={self.resonance_energy_threshold!r}: it is "
                "a fraction of the memory's energy, in (0, 1)"
            )
        if not 0.0 <= _number(self, "gamma_adjust_rate") < 1.0:
            raise ValueError(f"Phase2Config.gamma_adjust_rate={self.gamma_adjust_rate!r}: must be in [0, 1)")
        for name in (
            "adaptive_decay",
            "resonance_enabled",
            "use_zeta_init",
            "zeta_embedding_trainable",
            "tie_embeddings",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Phase2Config.{name}={getattr(self, name)!r}: must be True or False")
        check_impl("Phase2Config.ops_impl", self.ops_impl)
        tf = self.transformer_config
        if tf is not None:
            if not isinstance(tf, TransformerLMConfig):
                raise ValueError(
                    f"Phase2Config.transformer_config has type {type(tf).__name__}; pass a "
                    "TransformerLMConfig (phase2.baseline), its dict, or None"
                )
            tf.validate()
            for name in ("vocab_size", "d_model"):
                if getattr(tf, name) != getattr(self, name):
                    raise ValueError(
                        f"Phase2Config.transformer_config.{name}={getattr(tf, name)} differs from "
                        f"{name}={getattr(self, name)}: weights could not be copied; use "
                        "Phase2Config.from_transformer(transformer_config)"
                    )
            if tf.activation not in ACTIVATIONS:
                raise ValueError(f"Phase2Config.transformer_config.activation={tf.activation!r} is unknown")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)  # nested dataclasses become dicts too
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Phase2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{_unknown_fields(unknown)}; known fields: {sorted(known)}")
        return cls(**d).validate()

    @classmethod
    def from_transformer(cls, transformer_config: TransformerLMConfig, **overrides) -> Phase2Config:
        """The Phase 2 model of the Transformer's width, depth, vocabulary and length, heads of the same size."""
        if isinstance(transformer_config, dict):
            transformer_config = TransformerLMConfig.from_dict(transformer_config)
        if not isinstance(transformer_config, TransformerLMConfig):
            raise ValueError(f"from_transformer needs a TransformerLMConfig, got {type(transformer_config).__name__}")
        b = transformer_config.validate()
        base = dict(
            transformer_config=b,
            vocab_size=b.vocab_size,
            d_model=b.d_model,
            n_layers=b.n_layers,
            n_seq=b.max_len,
            ffn_dim=b.ffn_dim,
            dropout=b.dropout,
            num_heads=b.n_heads,
            head_dim=b.d_model // b.n_heads,
            tie_embeddings=b.tie_embeddings,
        )
        base.update(overrides)
        return cls(**base).validate()

    def replace(self, **overrides) -> Phase2Config:
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(_unknown_fields(unknown))
        return replace(self, **overrides)


# fields renamed: an old name in a config or a checkpoint's overrides is refused with what to write instead
RENAMED_FIELDS = {"use_triton_bk": "ops_impl = 'auto' | 'torch' | 'triton' (use_triton_bk=false: ops_impl='torch')"}


def _unknown_fields(unknown: list[str]) -> str:
    renamed = "".join(f"; {old} is now {RENAMED_FIELDS[old]}" for old in unknown if old in RENAMED_FIELDS)
    return f"Phase2Config: unknown fields {unknown}{renamed}"


def _number(cfg, name):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Phase2Config.{name}={value!r}: must be a number")
    return value


def _positive(cfg, name):
    if not _number(cfg, name) > 0:
        raise ValueError(f"Phase2Config.{name}={getattr(cfg, name)!r}: must be > 0")


def _positive_int(cfg, name):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Phase2Config.{name}={value!r}: must be a positive integer")


# Three sizes (heads x head_dim = d_model, heads of 64) and a CPU-sized one for tests and smoke runs.
PRESETS: dict[str, dict] = {
    "debug": dict(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_seq=256,
        num_heads=2,
        head_dim=32,
        ffn_dim=256,
        dropout=0.0,
        chunk_size=16,
        gate_interval=32,
    ),
    "small": dict(d_model=256, n_layers=4, n_seq=512, num_heads=4, head_dim=64),
    "base": dict(d_model=512, n_layers=6, n_seq=1024, num_heads=8, head_dim=64),
    "large": dict(d_model=1024, n_layers=12, n_seq=2048, num_heads=16, head_dim=64),
}


def get_phase2_preset(name: str, **overrides) -> Phase2Config:
    """A preset's config, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown Phase 2 preset {name!r}; choose one of {sorted(PRESETS)}")
    return Phase2Config(**PRESETS[name]).replace(**overrides).validate()
