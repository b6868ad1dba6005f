"""Phase2Config: every knob of the Breath-of-Life language model, its presets, and checks.

    config = get_phase2_preset("base")
    config = Phase2Config(vocab_size=1000, d_model=128, n_layers=2, base_decay=0.02, hebbian_eta=0.15)
    config = Phase2Config.from_phase1(transformer_lm_config)   # same width/depth as the baseline
    Phase2Config.from_dict(config.to_dict()) == config

Every field changes the model except the implementation choices that must not change its outputs
(chunk_size, use_triton_bk, triton_block_size) and the metadata fields (target_vram_gb,
target_speedup_triton); tests/phase2/test_config.py flips each one to hold that true.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from phase2.baseline import ACTIVATIONS, TransformerLMConfig


@dataclass
class Phase2Config:
    # --- Phase 1 compatibility: the baseline Transformer LM the copied weights come from (or None). When
    # set, the copied modules keep its behaviour: the FFN uses its activation and the token embedding its
    # sqrt(d_model) scale, so they compute in Phase 2 what they computed in Phase 1.
    phase1_config: TransformerLMConfig | None = None

    # --- BK-Core (phase2/ops/bk_core): implementation choices, outputs do not depend on them
    use_triton_bk: bool = True  # Triton kernels on CUDA (and under TRITON_INTERPRET=1); False: PyTorch loop
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
    ffn_dim: int | None = None  # None: 4 * d_model (or the Phase 1 FFN's width when phase1_config is set)
    dropout: float = 0.1
    tie_embeddings: bool = True  # output head shares the token embedding matrix

    # --- Memory schedule
    chunk_size: int = 64  # compute chunk of the parallel (training) form; outputs do not depend on it
    gate_interval: int = 64  # tokens between gate updates (SNR filter, resonance, Gamma adjustment), counted
    # from the first token of the stream: a model hyper-parameter, unlike chunk_size
    gamma_adjust_rate: float = 0.01  # Lyapunov remedy: when ||S||_F^2 rose over the last gate interval,
    # Gamma is multiplied by (1 + rate); when it fell, relaxed by (1 - rate) down to the learned Gamma

    # --- Performance targets (documentation only: the model does not read them)
    target_vram_gb: float = 8.0
    target_speedup_triton: float = 3.0

    def __post_init__(self):
        if isinstance(self.phase1_config, dict):
            self.phase1_config = TransformerLMConfig.from_dict(self.phase1_config)

    @property
    def resolved_ffn_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return self.phase1_config.ffn_dim if self.phase1_config is not None else 4 * self.d_model

    @property
    def ffn_activation(self) -> str:
        return self.phase1_config.activation if self.phase1_config is not None else "gelu"

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
        for name in (
            "base_decay",
            "hebbian_eta",
            "hebbian_dt",
            "snr_threshold",
            "target_vram_gb",
            "target_speedup_triton",
        ):
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
            "use_triton_bk",
            "tie_embeddings",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Phase2Config.{name}={getattr(self, name)!r}: must be True or False")
        p1 = self.phase1_config
        if p1 is not None:
            if not isinstance(p1, TransformerLMConfig):
                raise ValueError(
                    f"Phase2Config.phase1_config has type {type(p1).__name__}; pass a "
                    "TransformerLMConfig (phase2.baseline), its dict, or None"
                )
            p1.validate()
            for name in ("vocab_size", "d_model"):
                if getattr(p1, name) != getattr(self, name):
                    raise ValueError(
                        f"Phase2Config.phase1_config.{name}={getattr(p1, name)} differs from "
                        f"{name}={getattr(self, name)}: weights could not be copied; use "
                        "Phase2Config.from_phase1(phase1_config)"
                    )
            if p1.activation not in ACTIVATIONS:
                raise ValueError(f"Phase2Config.phase1_config.activation={p1.activation!r} is unknown")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)  # nested dataclasses become dicts too
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Phase2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Phase2Config: unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**d).validate()

    @classmethod
    def from_phase1(cls, baseline_config: TransformerLMConfig, **overrides) -> Phase2Config:
        """The Phase 2 model of the baseline's width, depth, vocabulary and length, heads of the same size."""
        if isinstance(baseline_config, dict):
            baseline_config = TransformerLMConfig.from_dict(baseline_config)
        if not isinstance(baseline_config, TransformerLMConfig):
            raise ValueError(f"from_phase1 needs a TransformerLMConfig, got {type(baseline_config).__name__}")
        b = baseline_config.validate()
        base = dict(
            phase1_config=b,
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
            raise ValueError(f"Phase2Config: unknown fields {unknown}")
        return replace(self, **overrides)


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


# Seed 003's presets (heads x head_dim = d_model) and a CPU-sized one for tests and smoke runs.
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
        target_vram_gb=1.0,
    ),
    "small": dict(d_model=256, n_layers=4, n_seq=512, num_heads=4, head_dim=64, target_vram_gb=4.0),
    "base": dict(d_model=512, n_layers=6, n_seq=1024, num_heads=8, head_dim=64, target_vram_gb=8.0),
    "large": dict(d_model=1024, n_layers=12, n_seq=2048, num_heads=16, head_dim=64, target_vram_gb=16.0),
}


def get_phase2_preset(name: str, **overrides) -> Phase2Config:
    """A preset's config, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown Phase 2 preset {name!r}; choose one of {sorted(PRESETS)}")
    return Phase2Config(**PRESETS[name]).replace(**overrides).validate()
