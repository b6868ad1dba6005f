"""Phase 1: the HPCM learned image codec on CompressAI, its rate-distortion loss, real bitstreams and R-D metrics.

    from phase1 import build_hpcm, load_codec, encode, decode
    model, meta = load_codec("best.pt", device="cuda")
    data = encode(model, x)                                  # (1, 3, H, W) in [0, 1] -> file bytes

Each name is imported from its module on first use (module-level __getattr__): CompressAI takes seconds to
import, and phase1.data or phase1.rd do not need it.
"""

import warnings

from common.exports import lazy_exports

# CompressAI 1.2.8 scripts a helper with torch.jit.script at import, which newer torch deprecates; the warning is
# about CompressAI's code, not the user's, and would open every command's output.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

_EXPORTS = {
    "phase1.hpcm": ["HPCM", "HPCMConfig", "build_hpcm", "load_hpcm_state_dict"],
    "phase1.loss": ["RateDistortionLoss"],
    "phase1.codec": ["CodecError", "encode", "decode"],
    "phase1.weights": ["load_codec", "load_weights_into"],
    "phase1.evaluate": ["evaluate_image", "evaluate_checkpoints"],
    "phase1.rd": ["bd_rate", "bd_psnr"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
