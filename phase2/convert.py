"""Phase 1 -> Phase 2: a Phase 2 model that starts from a trained baseline Transformer LM.

    phase2 = convert_phase1_to_phase2(baseline)                                  # same width and depth
    phase2 = convert_phase1_to_phase2(baseline, freeze_phase1_weights=True)       # train only the new parts
    phase2.conversion  ->  {"copied": [names...], "skipped": [(name, reason)...]}

Copied when the shapes agree: the token embedding, every layer's FFN (fc1, fc2 with biases) and its two
LayerNorms (norm1 -> ln1 before the mixer, norm2 -> ln2 before the FFN), and the output head. The new parts
(potential, Hebbian memory, BK-Core, final LayerNorm, positional table) keep their own initialisation, the
zeta one when use_zeta_init. The Phase 2 config records the baseline (phase1_config), so the copied FFN keeps
its activation and the embedding its sqrt(d_model) scale.
"""

from __future__ import annotations

import torch

from phase2.baseline import TransformerLM
from phase2.config import Phase2Config
from phase2.model import Phase2IntegratedModel


def _pairs(phase1: TransformerLM, phase2: Phase2IntegratedModel):
    """(phase2 name, phase2 tensor, phase1 tensor) for every part that may be copied."""
    p1 = dict(phase1.named_parameters(remove_duplicate=False))
    p2 = dict(phase2.named_parameters(remove_duplicate=False))
    names = [("tok_emb.weight", "embed.tok.weight")]
    for i in range(min(len(phase1.blocks), len(phase2.blocks))):
        for new, old in (("ln1", "norm1"), ("ln2", "norm2"), ("ffn.fc1", "ffn.fc1"), ("ffn.fc2", "ffn.fc2")):
            for leaf in ("weight", "bias"):
                names.append((f"blocks.{i}.{new}.{leaf}", f"blocks.{i}.{old}.{leaf}"))
    names.append(("head.weight", "fc_out.weight"))
    return [(new, p2.get(new), p1.get(old)) for new, old in names]


@torch.no_grad()
def convert_phase1_to_phase2(
    phase1_model: TransformerLM,
    phase2_config: Phase2Config | None = None,
    copy_compatible_weights: bool = True,
    freeze_phase1_weights: bool = False,
) -> Phase2IntegratedModel:
    if not isinstance(phase1_model, TransformerLM):
        raise ValueError(
            f"convert_phase1_to_phase2: phase1_model is a {type(phase1_model).__name__}; pass a "
            "phase2.baseline.TransformerLM (the LM line's Phase 1)"
        )
    base = phase1_model.config
    if phase2_config is None:
        config = Phase2Config.from_phase1(base)
    elif phase2_config.phase1_config is None:
        config = phase2_config.replace(phase1_config=base).validate()
    else:
        config = phase2_config.validate()
    model = Phase2IntegratedModel(config)
    device = next(phase1_model.parameters()).device
    model.to(device)
    copied, skipped = [], []
    tied = config.tie_embeddings
    for name, new, old in _pairs(phase1_model, model):
        if name == "head.weight" and tied:
            skipped.append((name, "tie_embeddings: the head is the copied token embedding"))
        elif not copy_compatible_weights:
            skipped.append((name, "copy_compatible_weights=False"))
        elif new is None or old is None:
            skipped.append((name, "absent in one of the models"))
        elif new.shape != old.shape:
            skipped.append((name, f"shape {tuple(old.shape)} in Phase 1, {tuple(new.shape)} in Phase 2"))
        else:
            new.copy_(old)
            copied.append(name)
    if freeze_phase1_weights:
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in copied:
            params[name].requires_grad_(False)
    model.conversion = {"copied": copied, "skipped": skipped}
    return model
