"""One memory step in plain torch: consolidate a chunk, attend, and keep the sticky statistic.

This is the reference every other backend is checked against. It is differentiable with respect
to the frames, the queries and the projections; the previous coefficients are state (no gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..config import MemoryConfig
from . import positions as pos
from . import sticky
from .attention import (GaussianDensity, Quadrature, attention_constants, gaussian_density_weights,
                        quadrature_weights, read_values, scores, slot_weights)
from .basis import gaussian_basis, gaussian_parameters, gaussian_values, rectangular_bins, rectangular_membership
from .consolidate import consolidate_dense, consolidate_segmented
from .fit import DenseFit, SegmentedFit, consolidation_fit, first_fit, on_device


@dataclass(frozen=True)
class PointBasis:
    """ψ at fixed points: their bin ``bins`` [P] (-1: none) when each lies in ≤ 1 bin, and ``dense`` [P, N].

    ``in_bins`` says every point lies in some bin (no -1 in ``bins``).
    """

    bins: torch.Tensor | None
    dense: torch.Tensor
    in_bins: bool = True


@dataclass(frozen=True)
class PastSamples:
    """Where a consolidation reads the old signal: old bins [S or 1, M] or ψ rows [.., M, N]."""

    bins: torch.Tensor | None
    dense: torch.Tensor | None
    in_bins: bool = True


def _point_basis(cfg: MemoryConfig, points: pos.Positions) -> PointBasis:
    if cfg.basis == "rectangular":
        bins = rectangular_bins(points, cfg.num_basis)
        member = rectangular_membership(points, cfg.num_basis)
        return PointBasis(bins, member.to(torch.float64), bins is not None and bool((bins >= 0).all()))
    mu, sigma = gaussian_parameters(cfg.num_basis, cfg.sigmas)
    return PointBasis(None, gaussian_values(points.values, mu, sigma))


@lru_cache(maxsize=64)
def uniform_sample_basis(cfg: MemoryConfig) -> PointBasis:
    """ψ at the uniform past-sample points (sticky off)."""
    return _point_basis(cfg, pos.uniform_samples(cfg.past_samples, cfg.tau, cfg.preset))


@lru_cache(maxsize=64)
def upstream_bases(cfg: MemoryConfig) -> tuple[PointBasis, PointBasis, torch.Tensor]:
    """ψ at the upstream sampler's integration grid and draw points, and the grid itself."""
    grid, draws = pos.upstream_histogram_grid()
    return _point_basis(cfg, grid), _point_basis(cfg, draws), grid.values


def _as_dense_fit(fit: SegmentedFit, num_basis: int) -> DenseFit:
    def dense(bins):
        if bins is None:
            return None
        g = torch.zeros(bins.numel(), num_basis, dtype=fit.scale.dtype, device=fit.scale.device)
        rows = (bins >= 0).nonzero().flatten()
        g[rows, bins[rows]] = fit.scale[bins[rows]]
        return g
    return DenseFit(dense(fit.past_bins), dense(fit.frame_bins))


def _apply_fit(fit, frames, past, samples: PastSamples | None, num_basis, dense_fit=consolidate_dense):
    if isinstance(fit, SegmentedFit) and (past is None or samples.bins is not None):
        return consolidate_segmented(frames, past, None if past is None else samples.bins, fit,
                                     True if past is None else samples.in_bins)
    if isinstance(fit, SegmentedFit):
        fit = _as_dense_fit(fit, num_basis)
    dense = None
    if past is not None:
        dense = samples.dense
        if dense is None:
            dense = torch.nn.functional.one_hot(samples.bins.clamp_min(0), num_basis).to(frames.dtype)
            dense = dense * (samples.bins >= 0)[..., None].to(frames.dtype)
    return dense_fit(frames, past, dense, fit)


def past_samples(cfg: MemoryConfig, stats: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator | None = None) -> PastSamples:
    """Where each stream reads its old signal, from the sticky statistic [S, K] (or uniformly)."""
    if not cfg.sticky:
        plan = on_device(uniform_sample_basis(cfg), device, dtype)
        return PastSamples(plan.bins, plan.dense if plan.bins is None else None, plan.in_bins)
    if cfg.sampling == "upstream":
        _, draws, _ = upstream_bases(cfg)
        draws = on_device(draws, device, dtype)
        b = sticky.upstream_samples(stats, cfg.past_samples, generator).to(device)
        if draws.bins is not None:
            return PastSamples(draws.bins[b], None, False)
        return PastSamples(None, draws.dense[b])
    if cfg.sampling == "quantile" and cfg.basis == "rectangular":
        return PastSamples(sticky.quantile_bins(stats, cfg.past_samples)[0], None)
    if cfg.sampling == "quantile":
        idx, frac = sticky.quantile_samples(stats, cfg.past_samples)
    else:
        idx, frac = sticky.multinomial_samples(stats, cfg.past_samples, generator)
    if cfg.basis == "rectangular":
        return PastSamples(idx, None)
    basis = on_device(gaussian_basis(cfg.num_basis, cfg.sigmas), device, torch.float64)
    t = sticky.sample_points(idx, frac, cfg.sticky_bins)
    return PastSamples(None, gaussian_values(t, basis.mu, basis.sigma).to(dtype))


def consolidate_chunk(cfg: MemoryConfig, frames: torch.Tensor, past: torch.Tensor | None,
                      filled: torch.Tensor | None, stats: torch.Tensor | None,
                      generator: torch.Generator | None = None, dense_fit=consolidate_dense) -> torch.Tensor:
    """New coefficients [S, N, e] from pooled frames [S, L, e] and each stream's old state.

    ``past`` None: every stream starts a new video. Otherwise ``filled`` is None when every stream
    holds one, or a bool mask [S] of those that do (the others start anew). ``dense_fit``: what
    applies a dense fit (``consolidate_dense``'s arguments and result), for the fused step's own
    products.
    """
    length, dtype, device = frames.shape[1], frames.dtype, frames.device
    n = cfg.num_basis
    # Both fits are fetched on every call (cached), so a stream's first call already puts the
    # later calls' constants on the device: a CUDA graph can be captured after one eager step.
    first = on_device(first_fit(cfg, length), device, dtype)
    later_fit = on_device(consolidation_fit(cfg, length), device, dtype)
    start = None  # a new video's coefficients, for the streams that need them
    if past is None or filled is not None:
        start = _apply_fit(first, frames, None, None, n, dense_fit)
        if past is None:
            return start
    samples = past_samples(cfg, stats, dtype, device, generator)
    later = _apply_fit(later_fit, frames, past.to(dtype), samples, n, dense_fit)
    return where_filled(filled, later, start)


def where_filled(filled: torch.Tensor | None, later, start):
    """Per stream, ``later`` (the coefficients fitted on the stream's state) where ``filled`` [S]
    holds and ``start`` (a new video's) elsewhere; ``later`` itself when ``filled`` is None (every
    stream held a state). ``later`` / ``start``: tensors [S, N, e] or tuples of them."""
    if filled is None:
        return later
    if isinstance(later, tuple):
        return tuple(where_filled(filled, a, b) for a, b in zip(later, start))
    return torch.where(filled[:, None, None], later, start)


def attend(cfg: MemoryConfig, coef: torch.Tensor, query: torch.Tensor, proj_key, proj_value,
           num_heads: int, keep_stats: bool = True):
    """Continuous attention of queries [S, Q, D] over coefficients [S, N, e].

    Returns the context [S, Q, D_v] and the sticky statistic [S, G, K] (float32; None if not kept).
    """
    const = on_device(attention_constants(cfg), coef.device, coef.dtype)
    a = scores(coef, query, proj_key, num_heads)
    stats = None
    if isinstance(const, Quadrature):
        r, density = quadrature_weights(a, const)
        if keep_stats and cfg.sampling != "upstream":
            stats = sticky.quadrature_mass(density.sum(2), const)
    elif isinstance(const, GaussianDensity):
        r, mean, var = gaussian_density_weights(a, const)
        if keep_stats and cfg.sampling != "upstream":
            stats = sticky.gaussian_interval_mass(mean, var, const.edges.to(torch.float64))
    else:
        r = slot_weights(a, const)
        if keep_stats and cfg.sampling != "upstream":
            stats = sticky.bin_mass(r)
    if keep_stats and cfg.sampling == "upstream":
        stats = upstream_statistic(cfg, a)
    return read_values(coef, r, proj_value, num_heads), stats


def upstream_statistic(cfg: MemoryConfig, a: torch.Tensor) -> torch.Tensor:
    """The published code's sticky histogram [S, 127] from slot scores a [S, H, Q, N]."""
    grid_basis, _, grid = upstream_bases(cfg)
    a = a.detach().to(torch.float64)
    if grid_basis.bins is not None:
        bins = grid_basis.bins.to(a.device)
        grid_scores = torch.where(bins >= 0, a[..., bins.clamp_min(0)], torch.zeros((), dtype=a.dtype, device=a.device))
    else:
        grid_scores = torch.matmul(a, grid_basis.dense.to(a.device).T)
    return sticky.upstream_histogram(grid_scores, grid.to(a.device))
