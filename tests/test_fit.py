"""Ridge fit and consolidation (SPEC sections 5-6): fast path vs dense solve, Gaussian G, caching."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch

from infvideo import LongTermMemory
from infvideo.config import MemoryConfig
from infvideo.reference import (attention_constants, consolidate_segmented, consolidation_fit, first_fit,
                                ridge_matrix)
from infvideo.reference.fit import on_device
from conftest import gaussian_basis_values, paper_membership, random_linear, rel_err


def _exact_bin(t: Fraction, n: int) -> int:
    return min(t.numerator * n // t.denominator, n - 1)


def _design(bins, n: int) -> torch.Tensor:
    """0/1 design matrix [P, N]; a bin of -1 (no bin) gives a zero row."""
    f = torch.zeros(len(bins), n, dtype=torch.float64)
    for row, b in enumerate(bins):
        if b >= 0:
            f[row, b] = 1.0
    return f


def _exact_first_positions(length: int):
    return [Fraction(2 * j + 1, 2 * length) for j in range(length)]


def _exact_consolidation_positions(samples: int, length: int, tau: float):
    t = Fraction(tau)
    past = [t * Fraction(2 * i - 1, 2 * samples) for i in range(1, samples + 1)]
    new = [t + (1 - t) * Fraction(2 * j - 1, 2 * length) for j in range(1, length + 1)]
    return past, new


def _data(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = [  # N, L, M, tau, ridge
    (7, 5, 11, 0.75, 0.5),
    (13, 9, 20, 0.9, 0.5),
    (32, 7, 512, 0.5, 0.5),
    (64, 16, 512, 0.75, 0.5),
    (5, 40, 3, 0.3, 1.7),
    (13, 5, 4, 0.75, 0.0),  # empty bins with no penalty: the dense pseudo-inverse gives them zero
]


@pytest.mark.parametrize("n,length,samples,tau,ridge", CASES)
def test_first_chunk_fast_path_equals_dense_solve(n, length, samples, tau, ridge):
    cfg = MemoryConfig(num_basis=n, tau=tau, past_samples=samples, ridge=ridge, preset="exact")
    frames = _data((3, length, 6), seed=n)
    bins = [_exact_bin(t, n) for t in _exact_first_positions(length)]
    g = ridge_matrix(_design(bins, n), None, ridge)
    expected = torch.einsum("pn,spe->sne", g, frames)
    got = consolidate_segmented(frames, None, None, first_fit(cfg, length))
    assert rel_err(got, expected) <= 1e-6


@pytest.mark.parametrize("per_stream", [False, True])
@pytest.mark.parametrize("n,length,samples,tau,ridge", CASES)
def test_consolidation_fast_path_equals_dense_solve(n, length, samples, tau, ridge, per_stream):
    s, e = 3, 6
    cfg = MemoryConfig(num_basis=n, tau=tau, past_samples=samples, ridge=ridge, preset="exact")
    frames, past = _data((s, length, e), seed=1), _data((s, n, e), seed=2)
    if per_stream:  # sticky: each stream reads its own sorted bins
        gen = torch.Generator().manual_seed(3)
        sample_bins = torch.randint(0, n, (s, samples), generator=gen).sort(-1).values
    else:  # uniform exact sampling u_i = (i − ½)/M
        u = [Fraction(2 * i - 1, 2 * samples) for i in range(1, samples + 1)]
        sample_bins = torch.tensor([_exact_bin(t, n) for t in u])
    rows = sample_bins.expand(s, samples)
    past_values = torch.stack([past[k, rows[k]] for k in range(s)])  # x̄(u_i) = B_past[bin(u_i)]
    past_pos, new_pos = _exact_consolidation_positions(samples, length, tau)
    design = _design([_exact_bin(t, n) for t in past_pos + new_pos], n)
    g = ridge_matrix(design, None, ridge)
    expected = torch.einsum("pn,spe->sne", g, torch.cat([past_values, frames], 1))
    got = consolidate_segmented(frames, past, sample_bins, consolidation_fit(cfg, length))
    assert rel_err(got, expected) <= 1e-6



@pytest.mark.parametrize("n,length,samples,tau", [(7, 5, 11, 0.75), (32, 7, 512, 0.9), (64, 64, 512, 0.5)])
def test_paper_consolidation_fast_path_equals_dense_solve(n, length, samples, tau):
    s, e, ridge = 2, 5, 0.5
    cfg = MemoryConfig(num_basis=n, tau=tau, past_samples=samples, ridge=ridge, preset="paper")
    frames, past = _data((s, length, e), seed=4), _data((s, n, e), seed=5)
    past_pos = torch.arange(1, samples + 1).float() * tau / samples
    new_pos = tau + (1 - tau) * (torch.arange(samples + 1, length + samples + 1).float() - samples) / length
    design = paper_membership(torch.cat([past_pos, new_pos]), n)
    assert design[-1].sum() == 0, "the last frame lands on t = 1 and is dropped"
    sample_bins = torch.randint(0, n, (s, samples), generator=torch.Generator().manual_seed(6)).sort(-1).values
    past_values = torch.stack([past[k, sample_bins[k]] for k in range(s)])
    g = ridge_matrix(design, None, ridge)
    expected = torch.einsum("pn,spe->sne", g, torch.cat([past_values, frames], 1))
    got = consolidate_segmented(frames, past, sample_bins, consolidation_fit(cfg, length))
    assert rel_err(got, expected) <= 1e-6


@pytest.mark.parametrize("ridge", [0.5, 1e-3])
def test_ridge_matrix_is_the_normal_equations(ridge):
    design, pads = _data((23, 9), seed=7), _data((6, 9), seed=8)
    full = torch.cat([design, pads])
    # Fᵀ(FFᵀ + λI)⁻¹ with F = fullᵀ [N, P], computed in the P×P space (push-through identity).
    expected = torch.linalg.solve(full @ full.T + ridge * torch.eye(full.shape[0], dtype=torch.float64), full)
    assert rel_err(ridge_matrix(design, pads, ridge), expected[: design.shape[0]]) <= 1e-8



def _pads(first: float, step_lo: float, last: float, step_hi: float) -> torch.Tensor:
    """Pad positions continuing the end spacings out to [−0.5, 1.5]."""
    left = [first - k * step_lo for k in range(1, 10_000) if first - k * step_lo >= -0.5 - 1e-12]
    right = [last + k * step_hi for k in range(1, 10_000) if last + k * step_hi <= 1.5 + 1e-12]
    return torch.tensor(left[::-1] + right, dtype=torch.float64)


def _gaussian_g(points: torch.Tensor, pads: torch.Tensor, n, sigmas, ridge) -> torch.Tensor:
    f = gaussian_basis_values(torch.cat([points, pads]), n, sigmas).T  # F [N, P_all]
    g = f.T @ torch.linalg.solve(f @ f.T + ridge * torch.eye(n, dtype=torch.float64),
                                 torch.eye(n, dtype=torch.float64))
    return g[: points.numel()]


@pytest.mark.parametrize("n,sigmas,length", [(16, (0.005, 0.01), 8), (30, (0.02, 0.05, 0.1), 7),
                                             (64, (0.005, 0.01), 33)])
def test_gaussian_first_fit_is_the_closed_form(n, sigmas, length):
    cfg = MemoryConfig(num_basis=n, basis="gaussian", sigmas=sigmas, preset="exact", ridge=0.5)
    points = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    pads = _pads(float(points[0]), 1 / length, float(points[-1]), 1 / length)
    fit = first_fit(cfg, length)
    assert fit.past_g is None
    assert rel_err(fit.frame_g, _gaussian_g(points, pads, n, sigmas, 0.5)) <= 1e-6


@pytest.mark.parametrize("n,sigmas,length,samples,tau", [(16, (0.005, 0.01), 8, 20, 0.75),
                                                         (30, (0.02, 0.05, 0.1), 7, 50, 0.9)])
def test_gaussian_consolidation_fit_is_the_closed_form(n, sigmas, length, samples, tau):
    cfg = MemoryConfig(num_basis=n, basis="gaussian", sigmas=sigmas, preset="exact", ridge=0.5,
                       past_samples=samples, tau=tau)
    past = tau * (torch.arange(1, samples + 1, dtype=torch.float64) - 0.5) / samples
    new = tau + (1 - tau) * (torch.arange(1, length + 1, dtype=torch.float64) - 0.5) / length
    points = torch.cat([past, new])
    pads = _pads(float(points[0]), tau / samples, float(points[-1]), (1 - tau) / length)
    expected = _gaussian_g(points, pads, n, sigmas, 0.5)
    fit = consolidation_fit(cfg, length)
    assert rel_err(torch.cat([fit.past_g, fit.frame_g]), expected) <= 1e-6


def test_constants_are_cached_per_configuration():
    cfg = MemoryConfig(num_basis=11, past_samples=17, tau=0.6)
    twin = MemoryConfig(num_basis=11, past_samples=17, tau=0.6)
    assert cfg == twin and cfg is not twin
    assert first_fit(cfg, 9) is first_fit(cfg, 9)
    assert first_fit(twin, 9) is first_fit(cfg, 9)
    assert consolidation_fit(cfg, 9) is consolidation_fit(twin, 9)
    assert first_fit(cfg, 9) is not first_fit(cfg, 10)
    assert first_fit(dataclasses.replace(cfg, tau=0.7), 9) is not first_fit(cfg, 9)
    assert attention_constants(cfg) is attention_constants(twin)
    fit = first_fit(cfg, 9)
    assert on_device(fit, torch.device("cpu"), torch.float32) is on_device(fit, torch.device("cpu"), torch.float32)


def test_memory_builds_constants_once():
    memory = LongTermMemory(num_basis=19, past_samples=23, tau=0.65)
    pk, pv = random_linear(6, 8, seed=0), random_linear(6, 8, seed=1)
    query = _data((2, 3, 8), seed=9).float()
    with torch.no_grad():
        memory(_data((2, 5, 6), seed=10).float(), query, pk, pv, 2)
        memory(_data((2, 5, 6), seed=11).float(), query, pk, pv, 2)
        built = (first_fit.cache_info().misses, consolidation_fit.cache_info().misses,
                 attention_constants.cache_info().misses)
        for seed in range(12, 15):
            memory(_data((2, 5, 6), seed=seed).float(), query, pk, pv, 2)
    assert (first_fit.cache_info().misses, consolidation_fit.cache_info().misses,
            attention_constants.cache_info().misses) == built
