"""Models by config: the Phase 2 LM from a preset (plus overrides) or the Transformer baseline, and the
batch-level diagnostics flattened to the scalar names training logs (seed 000's batch/* metrics)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from phase2.baseline import TransformerLM, TransformerLMConfig
from phase2.config import get_phase2_preset
from phase2.model import create_phase2_model


def build_model(cfg_model: DictConfig, vocab_size: int, seq_len: int) -> nn.Module:
    """`kind: phase2` (preset + overrides) or `kind: transformer` (TransformerLMConfig fields)."""
    if cfg_model.kind == "phase2":
        overrides = OmegaConf.to_container(cfg_model.overrides, resolve=True) if cfg_model.get("overrides") else {}
        n_seq = max(seq_len, get_phase2_preset(cfg_model.preset).n_seq)
        return create_phase2_model(preset=cfg_model.preset, **{"vocab_size": vocab_size, "n_seq": n_seq, **overrides})
    if cfg_model.kind == "transformer":
        fields = {k: v for k, v in OmegaConf.to_container(cfg_model, resolve=True).items() if k != "kind"}
        fields["max_len"] = max(fields.get("max_len", seq_len), seq_len)
        return TransformerLM(TransformerLMConfig(vocab_size=vocab_size, **fields))
    raise ValueError(f"model.kind={cfg_model.kind!r} is not one of: phase2, transformer")


def diagnostics_scalars(diagnostics: dict) -> dict[str, float]:
    """Averages over layers of the model's diagnostics, one float each (one host transfer for the gammas)."""
    gammas = torch.cat([g.detach().float().flatten() for g in diagnostics["gamma_values"]])
    stats = torch.stack([gammas.mean(), gammas.std(unbiased=False), gammas.min(), gammas.max()]).tolist()
    out = dict(zip(("gamma_mean", "gamma_std", "gamma_min", "gamma_max"), stats))
    for name, group, key in (
        ("snr_mean", "snr_stats", "mean_snr"),
        ("snr_low_ratio", "snr_stats", "low_snr_ratio"),
        ("resonant_modes", "resonance_info", "num_resonant_modes"),
        ("resonance_energy", "resonance_info", "total_resonance_energy"),
        ("lyapunov_stable_ratio", "stability_metrics", "lyapunov_stable_ratio"),
        ("fast_weight_energy", "stability_metrics", "fast_weight_energy"),
    ):
        values = [layer[key] for layer in diagnostics[group] if key in layer]
        if values:
            out[name] = sum(values) / len(values)
    return out
