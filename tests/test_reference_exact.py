"""Attention integrals of the reference against independent float64 brute-force integrals (SPEC 4, 8).

ψ is evaluated here from the SPEC's definitions, never through the package.
"""
from __future__ import annotations


import pytest
import torch
from conftest import gaussian_basis_values, paper_membership

from infvideo.config import MemoryConfig
from infvideo.reference import attention_constants, slot_weights
from infvideo.reference.attention import quadrature_weights

FINE = 200_001  # trapezoid points of the brute-force integrals (≥ 1e5)


def _trapezoid_weights(grid: torch.Tensor) -> torch.Tensor:
    gaps = grid.diff()
    w = torch.zeros_like(grid)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    return w


def _random_scores(shape, seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _integrate(scores_t: torch.Tensor, psi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """r_n = ∫ p ψ_n with p ∝ exp s, all by the trapezoid rule: scores_t [..., T], psi [T, N]."""
    f = torch.exp(scores_t - scores_t.amax(-1, keepdim=True)) * weights
    return (f @ psi) / f.sum(-1, keepdim=True)


def _exact_bins(j: torch.Tensor, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bins at t = j/k by integer arithmetic: the exact preset's min(⌊tN⌋, N−1), and the bin of the
    left limit t − 0 (they differ only where t is a bin edge)."""
    right = torch.clamp(j * n // k, max=n - 1)
    left = torch.clamp((j * n + k - 1) // k - 1, min=0, max=n - 1)
    return right, left


@pytest.mark.parametrize("n", [7, 13, 64])
def test_exact_rectangular_is_the_integral(n):
    a = _random_scores((2, 3, 4, n), seed=n, scale=2.0)
    j = torch.arange(FINE)
    t = j.to(torch.float64) / (FINE - 1)
    right, left = _exact_bins(j, FINE - 1, n)
    # At a bin edge the integrand jumps; the trapezoid rule is exact for a step function when the
    # node on the edge carries the mean of the two one-sided limits (a single point has no mass).
    w = _trapezoid_weights(t)
    f_right = torch.exp(a[..., right] - a.amax(-1, keepdim=True)) * w / 2
    f_left = torch.exp(a[..., left] - a.amax(-1, keepdim=True)) * w / 2
    one_hot = torch.nn.functional.one_hot
    numer = f_right @ one_hot(right, n).to(torch.float64) + f_left @ one_hot(left, n).to(torch.float64)
    expected = numer / (f_right.sum(-1, keepdim=True) + f_left.sum(-1, keepdim=True))
    cfg = MemoryConfig(num_basis=n, preset="exact", basis="rectangular")
    got = slot_weights(a, attention_constants(cfg))
    assert got.shape == a.shape
    err = float((got - expected).abs().max())
    assert err <= 1e-4, f"max |r - ∫pψ| = {err:.3g}"



@pytest.mark.parametrize("n,sigmas,preset", [(16, (0.005, 0.01), "exact"), (64, (0.005, 0.01), "exact"),
                                             (21, (0.02, 0.05, 0.1), "exact"), (64, (0.005, 0.01), "paper")])
def test_gaussian_quadrature_matches_fine_integral(n, sigmas, preset):
    # Scores of order one at the peaks of ψ (ψ peaks at 1/(σ√2π) ≈ 80 for σ = 0.005).
    a = _random_scores((2, 3, 4, n), seed=100 + n, scale=0.01)
    t = torch.linspace(0, 1, FINE, dtype=torch.float64)
    psi = gaussian_basis_values(t, n, sigmas)
    expected = _integrate(a @ psi.T, psi, _trapezoid_weights(t))
    cfg = MemoryConfig(num_basis=n, basis="gaussian", sigmas=sigmas, preset=preset, quad_points=1000)
    r, density = quadrature_weights(a, attention_constants(cfg))
    assert r.shape == a.shape and density.shape == (*a.shape[:-1], 1000)
    err = float((r - expected).abs().max() / expected.abs().max())
    assert err <= 1e-4, f"max |r - ∫pψ| / max r = {err:.3g}"



@pytest.mark.parametrize("n", [7, 13, 64, 256])
def test_paper_closed_form_is_the_trapezoid(n):
    a = _random_scores((2, 3, 4, n), seed=200 + n, scale=3.0)
    grid32 = torch.linspace(0, 1, 1000)
    psi = paper_membership(grid32, n)
    assert psi[-1].sum() == 0, "t = 1 lies in no bin under the paper rule"
    grid = grid32.to(torch.float64)
    expected = _integrate(a @ psi.T, psi, _trapezoid_weights(grid))  # s = 0 where t lies in no bin
    cfg = MemoryConfig(num_basis=n, preset="paper", basis="rectangular", quad_points=1000)
    got = slot_weights(a, attention_constants(cfg))
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= 1e-10, f"closed form vs direct trapezoid: {err:.3g}"
    assert float(got.sum(-1).max()) < 1.0, "the null slot (t = 1) must keep some mass"
