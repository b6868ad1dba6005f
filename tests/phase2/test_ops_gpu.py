"""The compiled Triton kernels on a GPU: BK-Core, Hebbian memory and gate scan against their references, and
the Phase 2 model at preset `small`'s shapes through the kernels against ops_impl="torch".

    pytest -m gpu tests/phase2/test_ops_gpu.py      # on a machine with a CUDA device

The interpreter tests (test_bk_core.py, test_hebbian.py, test_memory_gates.py) check the kernels' arithmetic,
not what the compiler makes of it: Triton 3.4 to 3.7.0 miscompiles some backward kernels on Hopper (see
phase2/ops/hebbian/kernels.py). Every test here counts the calls of the kernels' entry points, so one whose
dispatcher fell back to PyTorch fails instead of passing on the reference.

References: the complex128 BK-Core loop and the float64 Hebbian recurrence (outputs and every gradient);
the gate scan has no gradient (its gates are controls, computed under no_grad) and its PyTorch reference is
float32 by construction, so the kernel is held to that, forward only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[2]
# relative L2 errors allowed against the references
TOL_C64, TOL_C128 = 1e-4, 1e-10  # BK-Core in complex64 / complex128
TOL_F32 = 2e-5  # Hebbian kernels in float32 (IEEE products) against float64
TOL_BF16 = 3e-2  # Hebbian kernels with bfloat16 products against float64 (measured ~4e-3, dg ~1e-2)
TOL_GATES = 1e-5  # gate-scan kernel against the float32 PyTorch scan
TOL_MODEL_LOSS, TOL_MODEL_GRAD = 1e-5, 1e-4  # the whole model, kernels against ops_impl="torch"


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    wide = torch.complex128 if ref.is_complex() else torch.float64  # where 1e-300 does not flush to zero
    x, ref = x.to(wide), ref.to(wide)
    return (torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300)).item()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Calls of each op's kernel entry point, counted through the name its dispatcher imports at call time."""
    import phase2.ops.bk_core.kernels as bk_kernels
    import phase2.ops.hebbian.kernels as hebbian_kernels
    import phase2.ops.memory_gates.kernels as gate_kernels

    calls = {"bk_core": 0, "hebbian": 0, "gate_scan": 0}
    entries = {
        "bk_core": (bk_kernels, "bk_core_triton"),
        "hebbian": (hebbian_kernels, "hebbian_chunked_triton"),
        "gate_scan": (gate_kernels, "gate_scan_triton"),
    }
    for op, (module, name) in entries.items():
        monkeypatch.setattr(module, name, _counting(getattr(module, name), op, calls))
    return calls


def _counting(run, op: str, calls: dict):
    def counted(*args, **kwargs):
        calls[op] += 1
        return run(*args, **kwargs)

    return counted


# ------------------------------------------------------------------------------------------------ BK-Core
def _bk_leaves(shape, dtype, seed, delta=0.3):
    """Dissipative a (Im(a - z) <= -delta), complex couplings, z per channel (the dim before T)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    rand = lambda *s: torch.rand(s, generator=gen, device="cuda", dtype=real)  # noqa: E731
    randn = lambda *s: torch.randn(s, generator=gen, device="cuda", dtype=real)  # noqa: E731
    a = torch.complex(randn(*shape), -(delta + rand(*shape)))
    k = torch.complex(F.softplus(randn(*shape)), 0.1 * randn(*shape))
    zshape = (shape[-2], 1) if len(shape) > 1 else ()
    z = torch.complex(0.3 * randn(*zshape), 0.05 + 0.1 * rand(*zshape))
    return [x.requires_grad_(True) for x in (a, k, z)]


def _value_and_grads(fn, leaves, w):
    out = fn(*leaves)
    # materialize: with T = 1 the reference loop never reads k (g_0 = 0), so its dk is zeros, not missing
    grads = torch.autograd.grad((out * w).real.sum(), leaves, allow_unused=True, materialize_grads=True)
    return out.detach(), grads


def _bk_chunks(shape, chunk) -> int:
    """Chunks per chain in the kernels' plan for these shapes: > 1 takes the two-pass path."""
    from dataclasses import replace

    import phase2.ops.bk_core.kernels as bk_kernels

    cfg = bk_kernels.CONFIG if chunk is None else replace(bk_kernels.CONFIG, min_chunk=chunk)
    chains = torch.Size(shape[:-1]).numel()
    return bk_kernels._plan(chains, shape[-1], cfg, cfg.tile_fwd)[1]


@pytest.mark.parametrize(
    "shape,chunk,chunked",
    [
        ((3, 5, 1), None, False),  # one step
        ((3, 5, 63), None, False),  # a partial tile; z per channel, summed over the batch
        ((7, 500), None, True),  # few chains: cut into chunks joined by the carry scans
        ((7, 500), 16, True),  # the least chunk length the model sets (triton_block_size)
        ((2, 3000), None, True),  # many chunks per chain
        ((2, 4096, 40), None, False),  # 8,192 chains: one pass, no chunks
    ],
)
def test_bk_core_kernels_match_the_complex128_loop(kernel_calls, shape, chunk, chunked):
    from phase2.ops.bk_core import bk_core, bk_core_reference

    assert (_bk_chunks(shape, chunk) > 1) == chunked  # the case covers the path it names
    for dtype, tol in ((torch.complex64, TOL_C64), (torch.complex128, TOL_C128)):
        leaves = _bk_leaves(shape, dtype, seed=shape[-1])
        ref_leaves = [x.detach().to(torch.complex128).requires_grad_(True) for x in leaves]
        gen = torch.Generator(device="cuda").manual_seed(1)
        w = torch.randn(shape, dtype=torch.complex128, device="cuda", generator=gen)  # weights of dL/dg
        got, grads = _value_and_grads(lambda a, k, z: bk_core(a, k, z, chunk=chunk), leaves, w.to(dtype))
        ref, ref_grads = _value_and_grads(bk_core_reference, ref_leaves, w)
        assert got.dtype == dtype and _rel(got, ref) < tol, (dtype, _rel(got, ref))
        for name, d, d_ref in zip("akz", grads, ref_grads):
            assert _rel(d, d_ref) < tol, (dtype, f"grad {name}", _rel(d, d_ref))
    assert kernel_calls["bk_core"] == 2  # impl="auto" took the kernels for both dtypes


def test_bk_core_long_chain_stays_bounded_and_finite(kernel_calls):
    from phase2.ops.bk_core import bk_core

    delta, T = 0.05, 65536
    a, k, _ = _bk_leaves((4, T), torch.complex64, seed=12, delta=delta)
    k = k.real.detach()  # real k >= 0: the case the bound |g| <= 1/delta holds for
    z = torch.zeros((), dtype=torch.complex64, device="cuda", requires_grad=True)
    g = bk_core(a, k, z)
    assert torch.isfinite(torch.view_as_real(g)).all()
    assert g.abs().max().item() <= 1.0 / delta * (1 + 1e-4)
    grads = torch.autograd.grad(g.real.sum(), (a, z))
    assert all(torch.isfinite(torch.view_as_real(d)).all() for d in grads)
    assert kernel_calls["bk_core"] == 1
    ref = bk_core(a.detach()[:1].to(torch.complex128), k[:1].double(), 0.0, impl="torch")  # one chain
    assert _rel(g.detach()[:1], ref) < TOL_C64


# ----------------------------------------------------------------------------------------- Hebbian memory
def _hebbian_inputs(B, H, T, K, V, with_S0, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda *s: torch.randn(s, generator=gen, device="cuda", dtype=torch.float64)  # noqa: E731
    q, k, v = randn(B, H, T, K), randn(B, H, T, K), randn(B, H, T, V)
    g = -0.5 * torch.rand(B, H, T, generator=gen, device="cuda", dtype=torch.float64)
    S0 = randn(B, H, K, V) if with_S0 else None
    return q, k, v, g, S0


def _hebbian_check(B, H, T, K, V, C, with_S0, dtype, tol):
    from phase2.ops.hebbian import hebbian_memory, kernels_fit

    q, k, v, g, S0 = _hebbian_inputs(B, H, T, K, V, with_S0, seed=T + K)
    assert kernels_fit(q.to(dtype), v.to(dtype), C)
    ref_leaves = [x.requires_grad_(True) for x in (q, k, v, g, S0) if x is not None]
    # q, k, v in the kernels' dtype; the log-decay and the state are float32 in the model
    dtypes = (dtype, dtype, dtype, torch.float32, torch.float32)
    leaves = [x.detach().to(d).requires_grad_(True) for x, d in zip(ref_leaves, dtypes)]
    w, wS = torch.randn_like(v), torch.randn(B, H, K, V, device="cuda", dtype=torch.float64)

    def scored(fn, xs):
        o, S = fn(*xs[:4], xs[4] if with_S0 else None)
        loss = (o.double() * w).sum() + (S.double() * wS).sum()
        return o.detach(), S.detach(), torch.autograd.grad(loss, xs)

    o, S, grads = scored(lambda *x: hebbian_memory(*x, chunk_size=C), leaves)
    o_ref, S_ref, grads_ref = scored(lambda *x: hebbian_memory(*x, chunk_size=C, mode="recurrent"), ref_leaves)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert _rel(o, o_ref) < tol and _rel(S, S_ref) < tol, (_rel(o, o_ref), _rel(S, S_ref))
    for name, d, d_ref in zip(("q", "k", "v", "g", "S0"), grads, grads_ref):
        assert _rel(d, d_ref) < tol, (f"grad {name}", _rel(d, d_ref))


@pytest.mark.parametrize(
    "B,H,T,K,V,C,with_S0",
    [
        (2, 3, 1, 16, 32, 16, True),  # one partial chunk
        (2, 3, 63, 16, 32, 16, True),  # a partial last chunk
        (2, 3, 500, 32, 16, 16, False),  # many chunks, no initial state
        (2, 2, 130, 64, 64, 64, True),  # the model's chunk and head size
        (1, 2, 40, 16, 128, 16, True),  # V = 128: the state scans in column blocks
        (1, 1, 200, 64, 128, 64, True),  # the largest tiles the tile rule admits (64 x 128)
        (1, 1, 200, 128, 16, 16, True),  # K = 128
        (64, 8, 64, 64, 64, 64, True),  # 512 rows: the scans' full 64-column blocks
    ],
)
def test_hebbian_kernels_float32_match_the_float64_recurrence(kernel_calls, B, H, T, K, V, C, with_S0):
    _hebbian_check(B, H, T, K, V, C, with_S0, torch.float32, TOL_F32)
    assert kernel_calls["hebbian"] == 1


def test_hebbian_kernels_bfloat16_stay_close_to_the_float64_recurrence(kernel_calls):
    # bfloat16 products, float32 state: what the model runs under autocast
    _hebbian_check(2, 4, 256, 64, 64, 64, True, torch.bfloat16, TOL_BF16)
    assert kernel_calls["hebbian"] == 1


# -------------------------------------------------------------------------------------------- gate scan
@pytest.mark.parametrize(
    "B,H,T,K,V,interval,pos0,resonance",
    [
        (2, 3, 41, 16, 16, 6, 0, True),  # several segments per call
        (2, 2, 100, 32, 16, 16, 5, True),  # a call starting inside an interval: gates carried in
        (1, 2, 200, 16, 32, 96, 64, False),  # an interval longer than a kernel tile (64 tokens); no resonance
        (2, 4, 512, 64, 64, 64, 0, True),  # preset small: 4 heads x 64, interval 64
        (2, 4, 256, 64, 64, 64, 128, True),  # small, on a later boundary, with a full memory
        (1, 4, 300, 64, 64, 64, 37, True),  # small, inside an interval, with a full memory
        (1, 1, 100, 128, 128, 32, 0, True),  # the largest tiles the tile rule admits
    ],
)
def test_gate_scan_kernel_matches_the_pytorch_scan(kernel_calls, B, H, T, K, V, interval, pos0, resonance):
    from phase2.ops.memory_gates import GateParams, Gates, gate_scan, gate_scan_reference, kernel_fits
    from phase2.zeta import zeta_mode_basis

    assert kernel_fits(K, V)
    gen = torch.Generator(device="cuda").manual_seed(T)
    k = F.normalize(torch.randn(B, H, T, K, generator=gen, device="cuda"), dim=-1)
    v = torch.randn(B, H, T, V, generator=gen, device="cuda")
    gamma = 0.05 + 0.05 * torch.rand(B, H, T, generator=gen, device="cuda")
    S0 = torch.randn(B, H, K, V, generator=gen, device="cuda") * (pos0 > 0)
    gates = Gates.initial(B, H, K, "cuda")
    if pos0:  # a memory that has been running: energy, Lyapunov multiplier and a gate carried in
        gates.last_energy, gates.lyapunov = S0.square().sum((-2, -1)) * 0.9, gates.lyapunov * 1.1
        gates.gamma = gates.gamma * 1.3
    p = GateParams(interval, 0.1, 2.0, 2.0, 1.5, 0.2, 0.15, resonance)
    rho = torch.full((H,), 0.5, device="cuda") if resonance else None
    args = (k, v, gamma, S0, gates, zeta_mode_basis(K).float().cuda(), rho, p, pos0)
    got, ref = gate_scan(*args), gate_scan_reference(*args)
    assert kernel_calls["gate_scan"] == 1
    first = 0 if ref.opens_at_boundary else 1  # statistics exist where a boundary opens the segment
    for name in ("gamma", "eta", "key", "end_energy"):
        assert _rel(getattr(got, name), getattr(ref, name)) < TOL_GATES, name
    for name in ("snr", "energy", "share"):
        assert _rel(getattr(got, name)[:, :, first:], getattr(ref, name)[:, :, first:]) < TOL_GATES, name
    for name in ("gamma", "eta", "key", "lyapunov", "last_energy"):
        assert _rel(getattr(got.final, name), getattr(ref.final, name)) < TOL_GATES, f"final {name}"


# ------------------------------------------------------------------------------------------ whole model
def _small_model(impl: str, vocab: int, seq_len: int):
    """Preset small as training builds it (experiments/phase2/model/small.yaml), dropout off."""
    from omegaconf import OmegaConf

    from phase2.factory import build_model

    cfg = OmegaConf.load(ROOT / "experiments/phase2/model/small.yaml")
    cfg.overrides = {"ops_impl": impl, "dropout": 0.0}
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=vocab, seq_len=seq_len).cuda()


def test_small_model_through_the_kernels_matches_ops_impl_torch(kernel_calls):
    from phase2.ops.hebbian import kernels_fit
    from phase2.ops.memory_gates import kernel_fits

    B, T, vocab = 2, 512, 1000
    kernels, torch_ops = _small_model("auto", vocab, T), _small_model("torch", vocab, T)
    torch_ops.load_state_dict(kernels.state_dict())
    c = kernels.config
    heads = torch.empty(B, c.num_heads, T, c.head_dim)  # the memory's q and v, float32 as the model has them
    assert kernels_fit(heads, heads, c.chunk_size) and kernel_fits(c.head_dim, c.head_dim)
    ids = torch.randint(0, vocab, (B, T + 1), generator=torch.Generator().manual_seed(1)).cuda()

    def loss_and_grads(model):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}

    loss_kernels, grads_kernels = loss_and_grads(kernels)
    assert all(n == c.n_layers for n in kernel_calls.values()), kernel_calls  # every op, once in each layer
    seen = dict(kernel_calls)
    loss_torch, grads_torch = loss_and_grads(torch_ops)
    assert kernel_calls == seen  # ops_impl="torch" ran no kernel
    assert abs(loss_kernels - loss_torch) <= TOL_MODEL_LOSS * abs(loss_torch), (loss_kernels, loss_torch)
    worst = {n: _rel(grads_kernels[n], g) for n, g in grads_torch.items()}
    assert max(worst.values()) < TOL_MODEL_GRAD, sorted(worst.items(), key=lambda item: -item[1])[:5]
    for name in ("blocks.0.bk.kappa", "blocks.0.bk.energy", "blocks.0.memory.rho", "blocks.3.memory.k_proj.weight"):
        assert grads_kernels[name].abs().max() > 0, name  # gradients reach each op's parameters at all
