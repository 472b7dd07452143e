"""The rules of bench/quadrature_accuracy.py: exact where they must be, and a converged truth."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import quadrature_accuracy as qa  # noqa: E402
from infvideo.reference.attention import quadrature_weights  # noqa: E402


def _integral(t: torch.Tensor, w: torch.Tensor, coeffs: np.ndarray) -> float:
    return float((w * torch.from_numpy(np.polynomial.polynomial.polyval(t.numpy(), coeffs))).sum())


@pytest.mark.parametrize("nodes", [4, 8, 16])
def test_gauss_legendre_panels_integrate_degree_2n_minus_1_exactly(nodes):
    coeffs = np.random.default_rng(nodes).standard_normal(2 * nodes)
    exact = float(np.polynomial.polynomial.polyval(1.0, np.polynomial.polynomial.polyint(coeffs)))
    edges = torch.tensor([0.0, 0.1, 0.35, 0.5, 1.0], dtype=torch.float64)  # unequal panels
    t, w = qa.gauss_legendre(nodes, edges)
    assert t.shape == w.shape == (4 * nodes,) and bool((w > 0).all())
    assert abs(_integral(t, w, coeffs) - exact) <= 1e-13 * max(1.0, abs(exact))


def test_simpson_integrates_cubics_exactly():
    coeffs = np.array([0.3, -1.0, 2.0, 5.0])
    t, w = qa.simpson(11)
    assert abs(_integral(t, w, coeffs) - (0.3 - 0.5 + 2 / 3 + 5 / 4)) <= 1e-14


def test_centre_panels_hold_every_centre():
    edges = qa.centre_edges(3)
    centres = torch.unique(qa.gaussian_parameters(qa.N, qa.SIGMAS)[0])
    assert len(edges) == 3 * (len(centres) - 1) + 1 and bool((edges.diff() > 0).all())
    assert torch.equal(edges[::3], centres)


def test_the_two_fine_rules_agree_on_sharp_scores():
    """The truth of the benchmark is converged: its two fine rules agree to 1e-10 on swinging scores."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 1, 3, qa.N, generator=gen, dtype=torch.float64) * 0.3  # s(t) swings by tens
    first, second = (quadrature_weights(a, qa.rule(*qa.gauss_legendre(n, torch.linspace(0, 1, k + 1,
                                                                                      dtype=torch.float64))))[0]
                     for _, n, k in (qa.REFERENCE, qa.CHECK))
    assert float((first - second).abs().max() / second.abs().max()) <= 1e-10
