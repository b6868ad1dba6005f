"""Phase 1: the HPCM learned image codec on CompressAI, its rate-distortion loss, real bitstreams and R-D metrics.

    from phase1 import build_hpcm, load_codec, encode, decode
    model, meta = load_codec("best.pt", device="cuda")
    data = encode(model, x)                                  # (1, 3, H, W) in [0, 1] -> file bytes

Each name is imported from its module on first use (module-level __getattr__): CompressAI takes seconds to
import, and phase1.data or phase1.rd do not need it.
"""

import importlib

_EXPORTS = {
    "phase1.hpcm": ["HPCM", "HPCMConfig", "build_hpcm", "load_hpcm_state_dict"],
    "phase1.loss": ["RateDistortionLoss"],
    "phase1.codec": ["CodecError", "encode", "decode"],
    "phase1.weights": ["load_codec", "load_weights_into"],
    "phase1.evaluate": ["evaluate_image", "evaluate_checkpoints"],
    "phase1.rd": ["bd_rate", "bd_psnr"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'phase1' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later look-ups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
