"""BK-Core reference: the definition (dense inverse), causality, gradients and long-chain stability."""

import pytest
import torch

from phase2.ops.bk_core import bk_core
from phase2.ops.bk_core.naive import bk_core_dense, bk_core_naive


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
    g = bk_core(a, k, z, impl="naive")
    assert _rel(g, ref) < 1e-10


@pytest.mark.parametrize("T", [1, 2, 8, 63, 257])
def test_equals_dense_inverse_complex64(T):
    a, k, z = _inputs((T,), torch.complex128, seed=10 + T)
    ref = bk_core_dense(a, k, z)
    g = bk_core(a.to(torch.complex64), k.to(torch.complex64), z, impl="naive")
    assert g.dtype == torch.complex64
    assert _rel(g.to(torch.complex128), ref) < 1e-4


def test_causal_exactly():
    a, k, z = _inputs((3, 40), torch.complex128, seed=1)
    g = bk_core(a, k, z, impl="naive")
    for s in (0, 1, 17, 39):
        a2, k2 = a.clone(), k.clone()
        a2[:, s] += 1.0 + 2.0j
        k2[:, s] *= 3.0
        g2 = bk_core(a2, k2, z, impl="naive")
        assert torch.equal(g2[:, :s], g[:, :s])
        assert (g2[:, s] != g[:, s]).all()


def test_first_coupling_ignored():
    a, k, z = _inputs((2, 5), torch.complex128, seed=2)
    k2 = k.clone()
    k2[:, 0] = 7.0 - 1.0j
    assert torch.equal(bk_core(a, k, z, impl="naive"), bk_core(a, k2, z, impl="naive"))


def test_gradcheck_reference_a_k_z():
    a, k, z = _inputs((2, 7), torch.complex128, seed=3)
    k = k + 0.1j * torch.randn(2, 7, dtype=torch.float64)  # complex couplings: all of the op's domain
    z = torch.tensor([[0.2 + 0.1j], [-0.3 + 0.05j]], dtype=torch.complex128)  # one energy per chain
    a.requires_grad_(True)
    k.requires_grad_(True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(bk_core_naive, (a, k, z))


def test_z_broadcasts_per_head():
    B, H, T = 2, 3, 6
    a, k, _ = _inputs((B, H, T), torch.complex128, seed=4)
    z = torch.tensor([0.1 + 0.2j, 0.0 + 0.1j, -0.2 + 0.3j], dtype=torch.complex128).view(H, 1)
    g = bk_core(a, k, z, impl="naive")
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


@pytest.mark.slow
def test_long_chain_stays_in_bound_reference():
    # T = 65,536 in complex64: the normalised recurrence neither under- nor overflows
    delta = 0.05
    a, k, z = _inputs((2, 65536), torch.complex64, seed=5, delta=delta)
    z = complex(0.0, 0.0)
    g = bk_core(a, k, z, impl="naive")
    assert torch.isfinite(torch.view_as_real(g)).all()
    assert g.abs().max().item() <= 1.0 / delta * (1 + 1e-5)
    assert (g.imag >= -1e-6).all()  # Im g >= 0: the induction behind the bound
