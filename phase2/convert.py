"""Transformer -> Phase 2: a Phase 2 model that starts from a trained baseline TransformerLM.

    model = convert_transformer_to_phase2(transformer)                           # same width and depth
    model = convert_transformer_to_phase2(transformer, freeze_copied_weights=True)  # train only the new parts
    model.conversion  ->  {"copied": [names...], "skipped": [(name, reason)...]}

Copied when the shapes agree: the token embedding, every layer's FFN (fc1, fc2 with biases) and its two
LayerNorms (norm1 -> ln1 before the mixer, norm2 -> ln2 before the FFN), and the output head. The new parts
(potential, Hebbian memory, BK-Core, final LayerNorm, positional table) keep their own initialisation, the
zeta one when use_zeta_init. The Phase 2 config records the Transformer's (transformer_config), so the copied
FFN keeps its activation and the embedding its sqrt(d_model) scale.

`convert_phase1_to_phase2` is the same function under the name and keywords of the original code, where the
Transformer was called "Phase 1"; it stays for code written against that name.
"""

from __future__ import annotations

import torch

from phase2.baseline import TransformerLM
from phase2.bk_core_lm import Phase2IntegratedModel
from phase2.config import Phase2Config


def _pairs(transformer: TransformerLM, phase2: Phase2IntegratedModel):
    """(phase2 name, phase2 tensor, transformer tensor) for every part that may be copied."""
    old_params = dict(transformer.named_parameters(remove_duplicate=False))
    new_params = dict(phase2.named_parameters(remove_duplicate=False))
    names = [("tok_emb.weight", "embed.tok.weight")]
    for i in range(min(len(transformer.blocks), len(phase2.blocks))):
        for new, old in (("ln1", "norm1"), ("ln2", "norm2"), ("ffn.fc1", "ffn.fc1"), ("ffn.fc2", "ffn.fc2")):
            for leaf in ("weight", "bias"):
                names.append((f"blocks.{i}.{new}.{leaf}", f"blocks.{i}.{old}.{leaf}"))
    names.append(("head.weight", "fc_out.weight"))
    return [(new, new_params.get(new), old_params.get(old)) for new, old in names]


@torch.no_grad()
def convert_transformer_to_phase2(
    transformer: TransformerLM,
    phase2_config: Phase2Config | None = None,
    copy_compatible_weights: bool = True,
    freeze_copied_weights: bool = False,
) -> Phase2IntegratedModel:
    if not isinstance(transformer, TransformerLM):
        raise ValueError(
            f"convert_transformer_to_phase2: got a {type(transformer).__name__}; pass a phase2.baseline.TransformerLM"
        )
    base = transformer.config
    if phase2_config is None:
        config = Phase2Config.from_transformer(base)
    elif phase2_config.transformer_config is None:
        config = phase2_config.replace(transformer_config=base).validate()
    else:
        config = phase2_config.validate()
    model = Phase2IntegratedModel(config)
    model.to(next(transformer.parameters()).device)
    copied, skipped = [], []
    for name, new, old in _pairs(transformer, model):
        if name == "head.weight" and config.tie_embeddings:
            skipped.append((name, "tie_embeddings: the head is the copied token embedding"))
        elif not copy_compatible_weights:
            skipped.append((name, "copy_compatible_weights=False"))
        elif new is None or old is None:
            skipped.append((name, "absent in one of the models"))
        elif new.shape != old.shape:
            skipped.append((name, f"shape {tuple(old.shape)} in the Transformer, {tuple(new.shape)} in Phase 2"))
        else:
            new.copy_(old)
            copied.append(name)
    if freeze_copied_weights:
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in copied:
            params[name].requires_grad_(False)
    model.conversion = {"copied": copied, "skipped": skipped}
    return model


def convert_phase1_to_phase2(
    phase1_model: TransformerLM,
    phase2_config: Phase2Config | None = None,
    copy_compatible_weights: bool = True,
    freeze_phase1_weights: bool = False,
) -> Phase2IntegratedModel:
    """convert_transformer_to_phase2 under the original code's name and keywords."""
    return convert_transformer_to_phase2(phase1_model, phase2_config, copy_compatible_weights, freeze_phase1_weights)
