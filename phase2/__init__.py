"""Phase 2: the BK-Core language model, its Transformer baselines, and the tools that use a trained checkpoint.

    from phase2 import create_phase2_model, Phase2Config, Phase2IntegratedModel
    model = create_phase2_model(preset="small")

Each name is imported from its module on first use (module-level __getattr__), so importing one submodule,
e.g. phase2.tokenizer, does not import the models, matplotlib or the training loop.
"""

from common.exports import lazy_exports

_EXPORTS = {
    "phase2.config": ["Phase2Config", "PRESETS", "get_phase2_preset"],
    "phase2.bk_core_lm": ["Phase2IntegratedModel", "Phase2State", "create_phase2_model"],
    "phase2.baseline": ["TransformerLM", "TransformerLMConfig", "TransformerPP", "TransformerPPConfig"],
    "phase2.factory": ["build_model"],
    "phase2.convert": ["convert_transformer_to_phase2", "convert_phase1_to_phase2"],
    "phase2.inference": ["LanguageModel", "load_language_model"],
    "phase2.evaluate": ["evaluate_text"],
    "phase2.generate": ["Sampling", "generate_ids"],
    "phase2.diagnostics": ["run_diagnostics"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
