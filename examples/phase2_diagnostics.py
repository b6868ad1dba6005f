"""Phase 2 diagnostics: Gamma per layer, SNR, resonance, stability, and the
comprehensive report, from a checkpoint on real text.

    python examples/phase2_diagnostics.py CHECKPOINT [--out diagnostics]
"""

import argparse
import json
from pathlib import Path

from phase2.diagnostics import build_report, plot_all, run_diagnostics
from phase2.evaluate import text_documents
from phase2.inference import load_language_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("checkpoint")
p.add_argument("--out", default="diagnostics")
args = p.parse_args()

lm = load_language_model(args.checkpoint)
diag = run_diagnostics(lm, text_documents("builtin", "val")[:5])
for layer, (gamma, snr, stab) in enumerate(zip(diag["gamma_values"], diag["snr_stats"], diag["stability_metrics"])):
    print(
        f"layer {layer}: Gamma {gamma.float().mean():.4f}, SNR {snr.get('mean_snr', float('nan')):.3f}, "
        f"stable ratio {stab.get('lyapunov_stable_ratio', float('nan')):.2f}"
    )
tokens = int(diag["gamma_values"][0].shape[1])
out = Path(args.out)
plot_all(diag, lm.model.config.gate_interval, tokens, out)
(out / "comprehensive_report.json").write_text(json.dumps(build_report(lm, diag, tokens), indent=2) + "\n")
print(f"plots and comprehensive_report.json in {out}")
