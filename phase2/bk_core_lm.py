"""The BK-Core language model (Phase 2, "Breath of Life"): BK-Core features + dissipative Hebbian memory, causal.

    model = create_phase2_model(preset="small")                     # or config=..., or **fields
    logits = model(input_ids)                                       # (B, T, vocab)
    logits, diagnostics = model(input_ids, return_diagnostics=True)
    logits, state = model(prompt, return_state=True)                # streaming: pass the state back in
    logits, state = model(next_token, state=state, return_state=True)

A block (pre-LayerNorm residual):
    h = LN(x);  V, Gamma = potential(h)                     # non-Hermitian potential, Gamma > 0 per head
    o, Gamma' = memory(h, Gamma)                            # Hebbian fast weights, gated Gamma' (memory.py)
    g = bk_core(V - i Gamma', softplus(kappa), E + i eta)   # causal resolvent diagonal (potential.py)
    x = x + W_o [o, Re g, Im g];  x = x + FFN(LN(x))

forward is pure: nothing is carried from one call to the next unless a state is passed (training batches
are independent and any batch size works). Each block keeps its last final fast weights in
`block.fast_weight_state` for inspection only; `reset_state()` clears them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from phase2.config import Phase2Config, get_phase2_preset
from phase2.layers import FeedForward, sinusoidal_table
from phase2.memory import HebbianMemory, MemoryState
from phase2.potential import BKCoreFeatures, NonHermitianPotential
from phase2.zeta import zeta_positional_table

OVERDAMPED_RATIO = 10.0  # mean Gamma / mean |V| above this: the potential is damped before it can act
# Share of non-increasing energy steps below which we warn, counted once the memory has had one time
# constant 1/(Gamma dt) to fill (while filling from empty its energy must rise). A healthy driven memory
# fluctuates around its level (about half the steps rise); a memory whose energy keeps growing scores ~0.
LYAPUNOV_MIN_STABLE = 0.25
LYAPUNOV_MIN_STEPS = 4  # fewer counted gate intervals than this say nothing either way


@dataclass
class Phase2State:
    """What streaming carries between calls: the next position and each layer's memory and BK-Core g."""

    pos: int = 0
    memory: list = field(default_factory=list)  # MemoryState per layer
    g_last: list = field(default_factory=list)  # (B, H, K) complex per layer

    def detach(self) -> Phase2State:
        return Phase2State(self.pos, [m.detach() for m in self.memory], [g.detach() for g in self.g_last])


class Phase2Block(nn.Module):
    def __init__(self, cfg: Phase2Config, layer: int):
        super().__init__()
        D, H, K = cfg.d_model, cfg.num_heads, cfg.head_dim
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.potential = NonHermitianPotential(D, H, K, cfg.base_decay, cfg.adaptive_decay, cfg.use_zeta_init)
        self.memory = HebbianMemory(cfg)
        self.bk = BKCoreFeatures(H, K, cfg.use_zeta_init, cfg.ops_impl, cfg.triton_block_size)
        self.out_proj = nn.Linear(3 * H * K, D, bias=False)  # mixes [memory read, Re g, Im g]
        self.ffn = FeedForward(D, cfg.resolved_ffn_dim, cfg.dropout, cfg.ffn_activation)
        self.drop = nn.Dropout(cfg.dropout)
        self.fast_weight_state = None  # (B, H, K, V) of the last call, detached; never read by forward

    def forward(self, x, pos0: int, mem: MemoryState | None, g_prev, want_diag: bool):
        h = self.ln1(x)
        V, gamma = self.potential(h)  # (B, T, H, K), (B, T, H)
        o, gamma, mem, diag = self.memory(h, gamma, pos0, mem, want_diag)
        g, g_last = self.bk(V, gamma, g_prev)  # (B, T, H, K) complex
        mix = torch.cat([o, g.real.flatten(2), g.imag.flatten(2)], -1).to(h.dtype)
        x = x + self.drop(self.out_proj(mix))
        x = x + self.drop(self.ffn(self.ln2(x)))
        self.fast_weight_state = mem.S.detach()
        if want_diag:
            diag.update(gamma=gamma.detach(), overdamping=gamma.mean() / V.float().abs().mean().clamp_min(1e-12))
        return x, mem, g_last, diag


class Phase2IntegratedModel(nn.Module):
    supports_diagnostics = True

    def __init__(self, config: Phase2Config | None = None, **fields):
        super().__init__()
        if config is None:
            config = Phase2Config().replace(**fields)
        elif fields:
            config = config.replace(**fields)
        self.config = c = config.validate()
        D = c.d_model
        self.tok_emb = nn.Embedding(c.vocab_size, D)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        # converted from a Transformer, the embedding keeps its scale sqrt(d) and the table its unit amplitude
        self.emb_scale = math.sqrt(D) if c.transformer_config is not None else 1.0
        amplitude = 1.0 if c.transformer_config is not None else 0.02 * math.sqrt(2.0)
        table = _positional_table(c.n_seq, D, c.use_zeta_init) * amplitude
        if c.zeta_embedding_trainable:
            self.pos_emb = nn.Parameter(table)
        else:
            self.register_buffer("pos_emb", table)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Phase2Block(c, i) for i in range(c.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        else:
            nn.init.normal_(self.head.weight, std=0.02)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2)
            nn.init.normal_(block.out_proj.weight, std=0.02 / math.sqrt(2 * c.n_layers))
            nn.init.normal_(block.ffn.fc2.weight, std=0.02 / math.sqrt(2 * c.n_layers))
            nn.init.zeros_(block.ffn.fc2.bias)
        self._warned: set[str] = set()

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        state: Phase2State | None = None,
        return_state: bool = False,
        return_diagnostics: bool = False,
    ):
        """input_ids (B, T) -> logits (B, T, vocab) [, state] [, diagnostics], in that order."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T) token ids, got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        pos0 = 0 if state is None else state.pos
        if pos0 + T > self.config.n_seq:
            raise ValueError(
                f"positions {pos0}..{pos0 + T - 1} exceed n_seq={self.config.n_seq}; build the model "
                "with a larger n_seq (or reset the stream)"
            )
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_emb[pos0 : pos0 + T].to(self.tok_emb.weight.dtype)
        x = self.drop(x)  # (B, T, D)
        new = Phase2State(pos0 + T)
        diags = []
        for i, block in enumerate(self.blocks):
            mem = state.memory[i] if state is not None else None
            g_prev = state.g_last[i] if state is not None else None
            x, mem, g_last, diag = block(x, pos0, mem, g_prev, return_diagnostics)
            new.memory.append(mem)
            new.g_last.append(g_last)
            diags.append(diag)
        logits = self.head(self.ln_f(x))
        out = (logits,)
        if return_state:
            out += (new,)
        if return_diagnostics:
            out += (self._diagnostics(diags),)
        return out[0] if len(out) == 1 else out

    def reset_state(self) -> None:
        """Forget the fast weights kept for inspection (forward never reads them)."""
        for block in self.blocks:
            block.fast_weight_state = None

    # ------------------------------------------------------------------------------------- diagnostics
    def _diagnostics(self, diags: list[dict]) -> dict:
        """Per layer: gamma_values, snr_stats, resonance_info, stability_metrics, overdamping_ratio. Tensors stay
        on the device; every float comes from one host transfer."""
        scalars, slots = [], []

        def later(x, sink, key):  # a 0-d tensor whose float goes to sink[key] after the single transfer
            scalars.append(x.float().reshape(()))
            slots.append((sink, key))

        out = {
            "gamma_values": [],
            "snr_stats": [],
            "resonance_info": [],
            "stability_metrics": [],
            "overdamping_ratio": [None] * len(diags),
        }
        for i, d in enumerate(diags):
            out["gamma_values"].append(d["gamma"])
            snr = {}
            if "snr" in d:
                s = d["snr"]
                snr["snr"] = s
                later(s.mean(), snr, "mean_snr")
                later(s.std(unbiased=False), snr, "std_snr")
                later((s < self.config.snr_threshold).float().mean(), snr, "low_snr_ratio")
            out["snr_stats"].append(snr)
            res = {}
            if self.config.resonance_enabled and "diag_energy" in d:
                res["diag_energy"] = d["diag_energy"]
                later(d["num_resonant_modes"].mean(), res, "num_resonant_modes")
                later(d["total_resonance_energy"].mean(), res, "total_resonance_energy")
            out["resonance_info"].append(res)
            if "energy" not in d:  # an empty call: no segment, nothing to measure
                out["stability_metrics"].append({})
                continue
            e, de = d["energy"].mean((0, 1)), d["dE_dt"]
            stab = {"energy": e, "dE_dt": de.mean((0, 1))}
            if de.numel():
                later((de <= 0).float().mean(), stab, "lyapunov_stable_ratio")
                filled = (d["end_position"] >= 1.0 / (d["gamma"].mean() * self.config.hebbian_dt)).float()
                counted = filled.sum() * de.shape[0] * de.shape[1]
                later(((de <= 0).float() * filled).sum() / counted, stab, "steady_state_stable_ratio")
                later(filled.sum(), stab, "steady_state_steps")
            later(d["energy"][..., -1].mean(), stab, "fast_weight_energy")
            out["stability_metrics"].append(stab)
            later(d["overdamping"], out["overdamping_ratio"], i)
        for (sink, key), value in zip(slots, torch.stack(scalars).tolist() if scalars else []):
            sink[key] = value
        for stab in out["stability_metrics"]:  # no step counted yet: the memory is still filling
            if math.isnan(stab.get("steady_state_stable_ratio", 0.0)):
                del stab["steady_state_stable_ratio"]
        self._warn_once(out)
        return out

    def _warn_once(self, out: dict) -> None:
        worst = max((r for r in out["overdamping_ratio"] if r is not None), default=0.0)
        if worst > OVERDAMPED_RATIO and "overdamped" not in self._warned:
            self._warned.add("overdamped")
            warnings.warn(
                f"Overdamped system detected: Gamma/|V| = {worst:.2f} (> {OVERDAMPED_RATIO}); reduce "
                f"base_decay (now {self.config.base_decay}), e.g. halve it",
                stacklevel=6,
            )
        ratios = [
            s["steady_state_stable_ratio"]
            for s in out["stability_metrics"]
            if s.get("steady_state_steps", 0) >= LYAPUNOV_MIN_STEPS
        ]
        if ratios and min(ratios) < LYAPUNOV_MIN_STABLE and "lyapunov" not in self._warned:
            self._warned.add("lyapunov")
            warnings.warn(
                f"Lyapunov stability violated: the fast-weight energy rose in {1 - min(ratios):.0%} of "
                "gate intervals after the memory filled; increase gamma_adjust_rate "
                f"(now {self.config.gamma_adjust_rate}, e.g. double it) or lower the learning rate",
                stacklevel=6,
            )

    def get_statistics(self) -> dict:
        params = list(self.parameters())
        blocks = []
        for block in self.blocks:
            S = block.fast_weight_state
            pot = block.potential
            blocks.append(
                {
                    "fast_weight_norm": None if S is None else float(S.norm()),
                    "gamma_per_head": (
                        pot.base_decay * torch.nn.functional.softplus(pot.gamma_bias.detach()) / math.log(2.0)
                    ).tolist(),
                    "bk_coupling_mean": float(torch.nn.functional.softplus(block.bk.kappa.detach()).mean()),
                    "resonance_gain": None if block.memory.rho is None else block.memory.rho.detach().tolist(),
                }
            )
        return {
            "num_parameters": sum(p.numel() for p in params),
            "num_trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "num_layers": len(self.blocks),
            "block_stats": blocks,
        }


def _positional_table(n_pos: int, d_model: int, zeta: bool) -> torch.Tensor:
    return zeta_positional_table(n_pos, d_model) if zeta else sinusoidal_table(n_pos, d_model)


def create_phase2_model(
    config: Phase2Config | None = None, preset: str | None = None, device=None, **overrides
) -> Phase2IntegratedModel:
    """A model from a config, a preset name, or neither (the defaults), with any field overridden.

    The weights are initialised on the CPU and then moved, so the same seed gives the same model on
    every device.
    """
    if config is not None and preset is not None:
        raise ValueError("create_phase2_model: pass config or preset, not both")
    if preset is not None:
        config = get_phase2_preset(preset, **overrides)
    elif config is not None:
        config = config.replace(**overrides) if overrides else config
    else:
        config = Phase2Config().replace(**overrides)
    model = Phase2IntegratedModel(config.validate())
    return model.to(device) if device is not None else model


def diagnostics_scalars(diagnostics: dict) -> dict[str, float]:
    """The model's diagnostics averaged over layers, one float per name, as training logs them (diag/*)."""
    gammas = torch.cat([g.detach().float().flatten() for g in diagnostics["gamma_values"]])
    # the four statistics stacked: one host transfer, not four
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
