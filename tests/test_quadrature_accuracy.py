"""The rules of bench/quadrature_accuracy.py (exact where they must be, a converged truth), and the
package's rules measured with them: the exact preset's Gauss–Legendre default within 1e-4 of the
converged Gaussian context, the paper preset's published trapezoid unchanged."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import quadrature_accuracy as qa  # noqa: E402
from infvideo.config import MemoryConfig  # noqa: E402
from infvideo.ops.quadrature_attention import quadrature_host_constants  # noqa: E402
from infvideo.reference.attention import attention_constants, quadrature_weights  # noqa: E402


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


# The exact preset's default rule (issue 18, item 2): its Gaussian context against the converged
# integral of the benchmark, on one seed of the benchmark's own memory (a few seconds).
TRUTH = ("GL-16", 16, 512)  # converged to ~1e-14 on these memories (bench: GL-8 on 500 panels is)
TRUTH_CHECK = ("GL-10", 10, 1000)  # no node in common with TRUTH


def _gl_rule(nodes: int, panels: int):
    return qa.rule(*qa.gauss_legendre(nodes, torch.linspace(0, 1, panels + 1, dtype=torch.float64)))


@pytest.fixture(scope="module", params=list(qa.SHARPNESS))
def converged_case(request):
    """(density name, memory's own context, converged context, coef, query, key, value) for seed 0."""
    coef, query, key, value, own = qa.memory_case(0, qa.SHARPNESS[request.param])
    truth, check = (qa.context(coef, query, key, value, _gl_rule(n, k)) for _, n, k in (TRUTH, TRUTH_CHECK))
    assert max(qa.row_errors(check, truth)) <= 1e-12, "the truth of this test is not converged"
    return request.param, own, truth, coef, query, key, value


def test_exact_preset_context_within_1e_4_of_the_converged_integral(converged_case):
    """The memory's own Gaussian context (exact preset, default T = 1,000) per query row."""
    density, own, truth, *_ = converged_case
    err = max(qa.row_errors(own, truth))
    assert err <= qa.TARGET, f"{density}: max row error {err:.3g} of the exact preset's default rule"


def test_the_trapezoid_on_as_many_points_is_not(converged_case):
    """The rule this replaced misses the target on sharp densities, so the test above can tell them apart."""
    density, _, truth, coef, query, key, value = converged_case
    err = max(qa.row_errors(qa.context(coef, query, key, value, qa.rule(*qa.trapezoid(1000))), truth))
    assert (err > 10 * qa.TARGET) if density == "sharp" else (err > 0.0)


@pytest.mark.parametrize("points,panels", [(1000, 125), (8, 1), (2, 1), (50, 7), (4001, 501)])
def test_exact_rule_is_composite_gauss_legendre(points, panels):
    """8 nodes on ⌈T/8⌉ equal panels: the benchmark's GL-8 rule, its log-weights, sticky panels."""
    cfg = MemoryConfig(num_basis=16, basis="gaussian", sigmas=(0.05, 0.1), quad_points=points)
    assert cfg.quad_panels == panels and cfg.sticky_bins == panels
    t, w = qa.gauss_legendre(8, torch.linspace(0, 1, panels + 1, dtype=torch.float64))
    quad = quadrature_host_constants(cfg)
    assert quad.grid.dtype == torch.float64 and quad.grid.shape == (8 * panels,)
    torch.testing.assert_close(quad.grid, t, rtol=0, atol=1e-15)
    torch.testing.assert_close(quad.log_weight, w.log(), rtol=1e-14, atol=0)
    assert quad.gaps is None and quad.panel_weight.shape == (panels, 8)
    assert abs(float(quad.log_weight.exp().sum()) - 1.0) <= 1e-14
    const = attention_constants(cfg)
    assert torch.equal(const.log_weight, quad.log_weight) and torch.equal(const.panel_weight, quad.panel_weight)
    inside = (quad.grid * panels).floor().reshape(panels, 8)
    assert torch.equal(inside, torch.arange(panels, dtype=torch.float64)[:, None].expand(panels, 8)), \
        "every node lies strictly inside its own panel"


@pytest.mark.parametrize("points", [1000, 37])
def test_paper_rule_is_the_published_trapezoid(points):
    """Bit for bit: float32 linspace(0, 1, T) and trapezoid weights from its float64 gaps."""
    cfg = MemoryConfig(num_basis=16, basis="gaussian", sigmas=(0.05, 0.1), quad_points=points, preset="paper")
    assert cfg.quad_panels is None and cfg.sticky_bins == points - 1
    grid = torch.linspace(0, 1, points).to(torch.float64)
    gaps = grid.diff()
    weight = torch.zeros(points, dtype=torch.float64)
    weight[:-1] += gaps / 2
    weight[1:] += gaps / 2
    quad = quadrature_host_constants(cfg)
    assert torch.equal(quad.grid, grid) and torch.equal(quad.log_weight, weight.log())
    assert torch.equal(quad.gaps, gaps) and quad.panel_weight is None
