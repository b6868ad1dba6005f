"""Phase 2 basics: build a model, run it, stream with a state, read its statistics.

python examples/phase2_basic_usage.py
"""

import torch

from phase2 import create_phase2_model, get_phase2_preset

config = get_phase2_preset("debug")
print(f"debug preset: d_model={config.d_model}, layers={config.n_layers}, heads={config.num_heads}")
model = create_phase2_model(preset="debug").eval()

ids = torch.randint(0, config.vocab_size, (2, 64))
with torch.no_grad():
    logits = model(ids)  # (2, 64, vocab): the whole sequence in parallel form
    print("logits", tuple(logits.shape))

    # Streaming: the state carries the fast weights, gates and BK-Core carry from call to call, so
    # a sequence fed in pieces gives the same logits as in one call.
    first, state = model(ids[:, :40], return_state=True)
    rest, state = model(ids[:, 40:], state=state, return_state=True)
    gap = (torch.cat([first, rest], 1) - logits).abs().max().item()
    print(f"pieces vs one call: max |difference| {gap:.2e} (next position {state.pos})")

    _, diagnostics = model(ids, return_diagnostics=True)
    print("mean Gamma per layer:", [round(g.float().mean().item(), 4) for g in diagnostics["gamma_values"]])

stats = model.get_statistics()
print(f"{stats['num_parameters']:,} parameters in {stats['num_layers']} layers")
