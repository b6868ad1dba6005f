"""Language models by config kind, as training, evaluation and generation build them.

    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len)

`kind: phase2` is the BK-Core LM from a preset plus overrides (experiments/phase2/model/small.yaml, ...);
`kind: transformer` and `kind: transformer_pp` are the baselines, their config fields listed in the yaml
(experiments/phase2/model/transformer.yaml, transformer_pp.yaml). Every model is built for at least seq_len
positions.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from phase2.baseline import TransformerLM, TransformerLMConfig, TransformerPP, TransformerPPConfig
from phase2.bk_core_lm import create_phase2_model
from phase2.config import get_phase2_preset

BASELINES = {
    "transformer": (TransformerLM, TransformerLMConfig),
    "transformer_pp": (TransformerPP, TransformerPPConfig),
}


def build_model(cfg_model: DictConfig, vocab_size: int, seq_len: int) -> nn.Module:
    if cfg_model.kind == "phase2":
        overrides = OmegaConf.to_container(cfg_model.overrides, resolve=True) if cfg_model.get("overrides") else {}
        n_seq = max(seq_len, get_phase2_preset(cfg_model.preset).n_seq)
        return create_phase2_model(preset=cfg_model.preset, **{"vocab_size": vocab_size, "n_seq": n_seq, **overrides})
    if cfg_model.kind in BASELINES:
        model_class, config_class = BASELINES[cfg_model.kind]
        fields = {k: v for k, v in OmegaConf.to_container(cfg_model, resolve=True).items() if k != "kind"}
        fields["max_len"] = max(fields.get("max_len", seq_len), seq_len)
        return model_class(config_class(vocab_size=vocab_size, **fields))
    raise ValueError(f"model.kind={cfg_model.kind!r} is not one of: phase2, {', '.join(BASELINES)}")
