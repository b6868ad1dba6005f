"""Zeta initialisation: the shipped zeros are the true ones, and everything built from them is CPU-computed."""

import math

import pytest
import torch

from phase2.config import PRESETS
from phase2.zeta import (
    zeta_energies,
    zeta_init_linear_,
    zeta_mode_basis,
    zeta_positional_table,
    zeta_ratios,
    zeta_spectrum,
    zeta_zeros,
)

# Published values (A. Odlyzko's tables of zeros of the Riemann zeta function), not read from our table.
KNOWN = {
    1: 14.134725141734693790,
    2: 21.022039638771554993,
    10: 49.773832477672302182,
    100: 236.524229665816205802,
    256: 478.942181534634826538,
    1000: 1419.422480945995686227,
}


@pytest.mark.parametrize("n", sorted(KNOWN))
def test_known_zeros(n):
    assert zeta_zeros(n)[n - 1].item() == pytest.approx(KNOWN[n], abs=1e-9)


def _riemann_von_mangoldt(t: torch.Tensor) -> torch.Tensor:
    """Smooth zero count N(T) ~ theta(T)/pi + 1 (theta: Riemann-Siegel theta, asymptotic series)."""
    theta = t / 2 * torch.log(t / (2 * math.pi)) - t / 2 - math.pi / 8 + 1 / (48 * t) + 7 / (5760 * t**3)
    return theta / math.pi + 1


def test_no_zero_missing_or_invented():
    # N(gamma_n) = n - 1/2 up to the oscillating term S(T), |S(T)| < 1 in this range: a skipped zero or a
    # random value would shift the count by at least one somewhere
    g = zeta_zeros(1024)
    n = torch.arange(1, 1025, dtype=torch.float64)
    assert (_riemann_von_mangoldt(g) - (n - 0.5)).abs().max() < 1.0
    assert (g[1:] > g[:-1]).all()


def test_table_covers_the_largest_preset():
    needed = max(max((p["d_model"] + 1) // 2, p["num_heads"] * p["head_dim"]) for p in PRESETS.values())
    assert zeta_zeros(needed).numel() == needed
    with pytest.raises(ValueError, match="holds 1024 zeros"):
        zeta_zeros(5000)


def test_derived_tables():
    r = zeta_ratios(4)
    assert r[0] == 1.0 and torch.allclose(r, zeta_zeros(4) / KNOWN[1])
    e = zeta_energies(64)
    assert e.mean().abs() < 1e-12 and (e.std() - 1).abs() < 1e-12
    pe = zeta_positional_table(100, 9)
    assert pe.shape == (100, 9) and pe.dtype == torch.float32 and pe.device.type == "cpu"
    assert torch.allclose(
        pe[:, 2].double(), torch.sin(torch.arange(100.0, dtype=torch.float64) * KNOWN[1] / KNOWN[2]), atol=1e-6
    )
    U = zeta_mode_basis(64)
    assert torch.allclose(U.T @ U, torch.eye(64, dtype=torch.float64), atol=1e-10)


def test_zeta_linear_init_spectrum_and_scale():
    torch.manual_seed(0)
    w = torch.empty(96, 64)
    zeta_init_linear_(w, std=0.02)
    s = torch.linalg.svdvals(w.double())
    expected = zeta_spectrum(64) * 0.02 * math.sqrt(96)
    assert torch.allclose(s, expected, rtol=1e-5)
    assert w.norm().item() == pytest.approx(0.02 * math.sqrt(96 * 64), rel=1e-5)


def test_zeta_linear_init_is_cpu_and_seeded():
    torch.manual_seed(3)
    a = zeta_init_linear_(torch.empty(32, 48, dtype=torch.float64), std=1.0)
    torch.manual_seed(3)
    b = zeta_init_linear_(torch.empty(32, 48, dtype=torch.float64), std=1.0)
    assert torch.equal(a, b)
