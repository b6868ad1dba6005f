"""BK-Core reference: the definition (dense inverse), causality, gradients and long-chain stability."""

import pytest
import torch

from phase2.ops import triton_interpreting
from phase2.ops.bk_core import bk_core, bk_core_dense, bk_core_reference


def _inputs(shape, dtype, seed, delta=0.3):
    """Dissipative inputs: Im(a - z) <= -delta, real k >= 0, varying per position."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    v = torch.randn(shape, generator=gen, dtype=real)
    gamma = delta + torch.rand(shape, generator=gen, dtype=real)
    a = torch.complex(v, -gamma)
    k = torch.nn.functional.softplus(torch.randn(shape, generator=gen, dtype=real)).to(dtype)
    z = complex(0.3, 0.05)
    return a, k, z


def _rel(x, ref):
    return ((x - ref).abs().norm() / ref.abs().norm()).item()


@pytest.mark.parametrize("T", [1, 2, 8, 63, 257])
def test_equals_dense_inverse_complex128(T):
    # random complex couplings too: the definition does not need k real
    gen = torch.Generator().manual_seed(T)
    a = torch.randn(T, dtype=torch.complex128, generator=gen) * 2 - 0.5j
    k = torch.randn(T, dtype=torch.complex128, generator=gen)
    z = complex(0.1, 0.2)
    ref = bk_core_dense(a, k, z)
    g = bk_core(a, k, z, impl="torch")
    assert _rel(g, ref) < 1e-10


@pytest.mark.parametrize("T", [1, 2, 8, 63, 257])
def test_equals_dense_inverse_complex64(T):
    a, k, z = _inputs((T,), torch.complex128, seed=10 + T)
    ref = bk_core_dense(a, k, z)
    g = bk_core(a.to(torch.complex64), k.to(torch.complex64), z, impl="torch")
    assert g.dtype == torch.complex64
    assert _rel(g.to(torch.complex128), ref) < 1e-4


def test_causal_exactly():
    a, k, z = _inputs((3, 40), torch.complex128, seed=1)
    g = bk_core(a, k, z, impl="torch")
    for s in (0, 1, 17, 39):
        a2, k2 = a.clone(), k.clone()
        a2[:, s] += 1.0 + 2.0j
        k2[:, s] *= 3.0
        g2 = bk_core(a2, k2, z, impl="torch")
        assert torch.equal(g2[:, :s], g[:, :s])
        assert (g2[:, s] != g[:, s]).all()


def test_first_coupling_ignored():
    a, k, z = _inputs((2, 5), torch.complex128, seed=2)
    k2 = k.clone()
    k2[:, 0] = 7.0 - 1.0j
    assert torch.equal(bk_core(a, k, z, impl="torch"), bk_core(a, k2, z, impl="torch"))


def test_gradcheck_reference_a_k_z():
    a, k, z = _inputs((2, 7), torch.complex128, seed=3)
    k = k + 0.1j * torch.randn(2, 7, dtype=torch.float64)  # complex couplings: all of the op's domain
    z = torch.tensor([[0.2 + 0.1j], [-0.3 + 0.05j]], dtype=torch.complex128)  # one energy per chain
    a.requires_grad_(True)
    k.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(bk_core_reference, (a, k, z))


def test_z_broadcasts_per_head():
    B, H, T = 2, 3, 6
    a, k, _ = _inputs((B, H, T), torch.complex128, seed=4)
    z = torch.tensor([0.1 + 0.2j, 0.0 + 0.1j, -0.2 + 0.3j], dtype=torch.complex128).view(H, 1)
    g = bk_core(a, k, z, impl="torch")
    assert g.shape == (B, H, T)
    for h in range(H):
        ref = bk_core_dense(a[1, h], k[1, h], complex(z[h, 0]))
        assert _rel(g[1, h], ref) < 1e-10


def test_bad_inputs_say_what_to_fix():
    a = torch.zeros(2, 5, dtype=torch.complex64)
    with pytest.raises(ValueError, match="broadcast"):
        bk_core(a, torch.zeros(3, 5), 0.1j)
    with pytest.raises(ValueError, match="dtype"):
        bk_core(a, torch.zeros(2, 5, dtype=torch.int64), 0.1j)
    with pytest.raises(ValueError, match="impl"):
        bk_core(a, torch.zeros(2, 5), 0.1j, impl="cuda")
    with pytest.raises(ValueError, match="'naive' is now 'torch'"):
        bk_core(a, torch.zeros(2, 5), 0.1j, impl="naive")


@pytest.mark.slow
def test_long_chain_stays_in_bound_reference():
    # T = 65,536 in complex64: the normalised recurrence neither under- nor overflows
    delta = 0.05
    a, k, z = _inputs((2, 65536), torch.complex64, seed=5, delta=delta)
    z = complex(0.0, 0.0)
    g = bk_core(a, k, z, impl="torch")
    assert torch.isfinite(torch.view_as_real(g)).all()
    assert g.abs().max().item() <= 1.0 / delta * (1 + 1e-5)
    assert (g.imag >= -1e-6).all()  # Im g >= 0: the induction behind the bound


# ------------------------------------------------------------------------------------- Triton kernels
def _interpreted_triton():
    """A private copy of phase2/ops/bk_core/kernels.py whose kernels run in the Triton interpreter.

    Triton fixes interpreter-or-compiler when a kernel is defined, so the copy is loaded with
    TRITON_INTERPRET=1 set for the import only; the package's own module (and bk_core's dispatch for
    everyone else) is untouched. Its name puts it inside the package, for its relative imports.
    """
    import importlib.util
    import os

    import phase2.ops.bk_core as pkg

    path = os.path.join(os.path.dirname(pkg.__file__), "kernels.py")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("phase2.ops.bk_core._kernels_interpreted", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    return mod


@pytest.fixture(scope="module")
def tri():
    pytest.importorskip("triton")
    return _interpreted_triton()


def _leaves(shape, dtype, seed, per_channel_z=True):
    a, k, _ = _inputs(shape, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    k = k + 0.1j * torch.randn(shape, generator=gen, dtype=real)  # complex couplings: the whole domain
    zshape = (shape[-2], 1) if per_channel_z else ()
    z = torch.complex(
        0.3 * torch.randn(zshape, generator=gen, dtype=real), 0.05 + 0.1 * torch.rand(zshape, generator=gen, dtype=real)
    )
    return [x.requires_grad_(True) for x in (a, k, z)]


def _grads(fn, leaves, w):
    g = fn(*leaves)
    grads = torch.autograd.grad((g * w).real.sum(), leaves, allow_unused=True)
    return g, [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]


def _check_against_reference(fn, shape, dtype, tol, seed):
    leaves = _leaves(shape, dtype, seed)
    ref_leaves = [x.detach().to(torch.complex128).requires_grad_(True) for x in leaves]
    w = torch.randn(shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))
    g, grads = _grads(fn, leaves, w.to(dtype))
    g_ref, grads_ref = _grads(bk_core_reference, ref_leaves, w)
    assert g.dtype == dtype and g.shape == shape
    assert _rel(g.to(torch.complex128), g_ref) < tol
    for name, d, d_ref in zip("akz", grads, grads_ref):
        scale = max(d_ref.abs().norm().item(), 1e-30)
        err = (d.to(torch.complex128) - d_ref).abs().norm().item() / scale
        assert err < tol, f"grad {name}: relative error {err:.2e}"


@pytest.mark.parametrize("T", [1, 63, 500])
@pytest.mark.parametrize("chunked", [False, True])
def test_triton_interpreter_matches_reference(tri, T, chunked):
    # batch 3 x channels 5, z per channel; chunked=True forces the two-pass long-chain path
    cfg = tri.BKCoreTritonConfig(
        tile_fwd=8, tile_bwd=8, chunk_below=10**9 if chunked else 0, target_rows=64, min_chunk=16
    )
    old, tri.CONFIG = tri.CONFIG, cfg
    try:
        _check_against_reference(tri.bk_core_triton, (3, 5, T), torch.complex64, 1e-4, seed=T)
        _check_against_reference(tri.bk_core_triton, (3, 5, T), torch.complex128, 1e-10, seed=T + 1)
    finally:
        tri.CONFIG = old


def test_triton_interpreter_tile16_and_plan(tri):
    cfg = tri.BKCoreTritonConfig(tile_fwd=16, tile_bwd=16, chunk_below=10**9, target_rows=40, min_chunk=16)
    L, nch = tri._plan(7, 300, cfg, 16)
    assert L % 16 == 0 and nch > 1 and (nch - 1) * L < 300 <= nch * L
    old, tri.CONFIG = tri.CONFIG, cfg
    try:
        _check_against_reference(tri.bk_core_triton, (7, 300), torch.complex128, 1e-10, seed=7)
    finally:
        tri.CONFIG = old


def test_triton_interpreter_gradcheck(tri):
    cfg = tri.BKCoreTritonConfig(tile_fwd=8, tile_bwd=8, chunk_below=10**9, target_rows=8, min_chunk=8)
    old, tri.CONFIG = tri.CONFIG, cfg
    try:
        a, k, z = _leaves((2, 11), torch.complex128, seed=9)  # two chunks per chain
        assert torch.autograd.gradcheck(tri.bk_core_triton, (a, k, z), fast_mode=True)
    finally:
        tri.CONFIG = old


def test_triton_interpreter_z_along_time_and_real_k(tri):
    # z varying along T is folded into a; a real k gets a real gradient
    a, k, _ = _leaves((2, 30), torch.complex128, seed=11)
    kr = k.detach().real.clone().requires_grad_(True)
    z = (0.1 + 0.2j) * torch.linspace(0, 1, 30, dtype=torch.float64)
    z = z.to(torch.complex128).requires_grad_(True)
    leaves = [a, kr, z]
    w = torch.randn(2, 30, dtype=torch.complex128)
    g, grads = _grads(lambda a, k, z: tri.bk_core_triton(a, k.to(a.dtype), z), leaves, w)
    g_ref, grads_ref = _grads(lambda a, k, z: bk_core_reference(a, k.to(a.dtype), z), leaves, w)
    assert _rel(g, g_ref) < 1e-10
    for d, d_ref in zip(grads, grads_ref):
        assert d.dtype == d_ref.dtype and _rel(d, d_ref) < 1e-10


DISPATCH_CHECK = """
import torch
import phase2.ops.bk_core.kernels as kernels
from phase2.ops.bk_core import bk_core, bk_core_reference
assert kernels.INTERPRETED
calls = []
run_kernels = kernels.bk_core_triton
kernels.bk_core_triton = lambda *args: calls.append(1) or run_kernels(*args)  # counts the dispatcher's calls
a = torch.complex(torch.randn(2, 9), -torch.ones(2, 9))
k = torch.rand(2, 9)
g = bk_core(a, k, 0.1 + 0.1j)  # impl="auto" on CPU tensors: the interpreted kernels
assert calls == [1], calls
r = bk_core_reference(a, k.to(a.dtype), torch.tensor(0.1 + 0.1j))
assert (g - r).abs().max() < 1e-5, (g - r).abs().max()
print("ok")
"""


@pytest.mark.parametrize("value", ["1", "true"])
def test_auto_runs_the_interpreted_kernels_whenever_triton_interprets(value):
    """Every spelling Triton takes for TRITON_INTERPRET makes both the kernels and the dispatcher interpret."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET=value)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", DISPATCH_CHECK], env=env, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_triton_on_cpu_without_the_interpreter_says_what_to_set():
    a = torch.zeros(2, 5, dtype=torch.complex64)
    if triton_interpreting():
        pytest.skip("this process interprets Triton kernels")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        bk_core(a, torch.zeros(2, 5), 0.1j, impl="triton")
