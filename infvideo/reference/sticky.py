"""Sticky memories (SPEC section 7): where the next consolidation reads the old signal.

After each attention step a stream keeps its attention density over time as masses over K equal
bins of [0, 1] (the N basis bins for rectangular ψ; for smooth ψ the bins of the quadrature rule,
``reference.quadrature``: its K Gauss–Legendre panels in the exact preset, each bin's mass the
rule's integral of p over it, or the T-1 trapezoid intervals in the paper preset),
summed over queries and kept per group (a head, or one group), [S, G, K]: every backend writes
this raw form and the samplers below add the groups up, so the mean over heads and queries of
SPEC section 7 is recovered up to a constant the samplers ignore. They turn the masses into M
sample points (bin index + fraction inside the bin), sorted in time.
"""
from __future__ import annotations


import torch


def _normalised(mass: torch.Tensor) -> torch.Tensor:
    return mass / mass.sum(-1, keepdim=True)


def total_mass(mass: torch.Tensor) -> torch.Tensor:
    """Groups added up in float64: [S, G, K] → [S, K] (a [S, K] input is returned as float64)."""
    mass = mass.to(torch.float64)
    return mass.sum(1) if mass.dim() == 3 else mass


def bin_mass(weights: torch.Tensor) -> torch.Tensor:
    """Mass of each rectangular bin per head, summed over queries: r [S, H, Q, N] → [S, H, N]."""
    return weights.detach().sum(2).to(torch.float32)


def interval_mass(density: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """Trapezoid mass of each grid interval per head from Σ_q p at T points [S, H, T] → [S, H, T-1]."""
    p = density.detach().to(torch.float32)
    return 0.5 * (p[..., 1:] + p[..., :-1]) * gaps.to(torch.float32)


def panel_mass(density: torch.Tensor, panel_weight: torch.Tensor) -> torch.Tensor:
    """Gauss–Legendre mass of each panel per head, Σ_{t_j in panel k} ω_j p(t_j), from Σ_q p at the
    K·n nodes (panel-major) [S, H, K·n] and the weights of each panel's nodes [K, n] → [S, H, K]."""
    p = density.detach().to(torch.float32)
    return (p.unflatten(-1, tuple(panel_weight.shape)) * panel_weight.to(torch.float32)).sum(-1)


def quadrature_mass(density: torch.Tensor, const) -> torch.Tensor:
    """The sticky statistic of a smooth basis [S, H, K] from Σ_q p at the rule's nodes [S, H, T].

    ``const`` holds the rule's sticky map (``Quadrature`` or ``QuadratureConstants``): per-panel
    masses for Gauss–Legendre panels (exact preset), per-interval trapezoid masses otherwise. Either
    way the K masses add up to the rule's integral Σ_j ω_j p(t_j) of the density.
    """
    if const.panel_weight is not None:
        return panel_mass(density, const.panel_weight)
    return interval_mass(density, const.gaps)


def gaussian_interval_mass(mean: torch.Tensor, var: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Mass of 𝒩(mean, var) [S, H, Q, 1] in each interval between ``edges`` [K+1] → [S, H, K]."""
    scale = torch.sqrt(2 * var.detach().to(torch.float64)).clamp_min(1e-12)
    cdf = 0.5 * (1 + torch.erf((edges - mean.detach().to(torch.float64)) / scale))
    return (cdf[..., 1:] - cdf[..., :-1]).sum(2).to(torch.float32)


def upstream_histogram(grid_scores: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The published sampler's histogram P [S, 1, 127] from scores at its 129-point grid [S, H, Q, 129].

    μ_k = ½(f_k + f_{k+1})(g_{k+1} - g_k) / Σ, f = exp s(g), per (h, q); P_b = Σ_{h,q} μ_{b+1}.
    """
    s = grid_scores.detach().to(torch.float64)
    f = torch.exp(s - s.amax(-1, keepdim=True))
    mass = 0.5 * (f[..., 1:] + f[..., :-1]) * grid.diff()
    mass = mass / mass.sum(-1, keepdim=True)
    return _normalised(mass[..., 1:].sum(dim=(1, 2)))[:, None].to(torch.float32)


def quantile_bins(mass: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bin of u_i = F⁻¹((i - ½)/M), F the CDF of bin masses [S, (G,) K]: (bins [S, M], levels, CDF)."""
    mass = total_mass(mass)
    cdf = mass.cumsum(-1)
    levels = (torch.arange(count, dtype=torch.float64, device=mass.device) + 0.5) / count
    levels = levels * cdf[..., -1:]
    idx = torch.searchsorted(cdf, levels.contiguous(), right=True).clamp_max(mass.shape[-1] - 1)
    return idx, levels, cdf


def quantile_samples(mass: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """u_i = F⁻¹((i - ½)/M) for the piecewise-linear CDF F of bin masses [S, (G,) K].

    Returns the bin of each sample [S, M] (int64, sorted) and its fraction inside the bin [S, M].
    """
    mass = total_mass(mass)
    idx, levels, cdf = quantile_bins(mass, count)
    below = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp_min(0)), torch.zeros_like(levels))
    inside = mass.gather(-1, idx)
    frac = torch.where(inside > 0, (levels - below) / inside.clamp_min(1e-300), torch.zeros_like(levels))
    return idx, frac.clamp(0.0, 1.0)


def _drawable(mass: torch.Tensor) -> torch.Tensor:
    """Rows without mass drawn uniformly: a stream emptied by ``reset(streams=...)`` has a zero
    statistic, which torch.multinomial rejects; it starts anew, so its draws are never read."""
    return torch.where(mass.sum(-1, keepdim=True) > 0, mass, torch.ones_like(mass))


def multinomial_samples(mass: torch.Tensor, count: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M i.i.d. draws from the piecewise-constant density of bin masses [S, (G,) K], sorted in time."""
    mass = _drawable(total_mass(mass))
    idx = torch.multinomial(mass, count, replacement=True, generator=generator)
    frac = torch.rand(idx.shape, dtype=torch.float64, device=mass.device, generator=generator)
    order = torch.argsort(idx.to(torch.float64) + frac, dim=-1)
    return idx.gather(-1, order), frac.gather(-1, order)


def upstream_samples(hist: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The published sampler: M draws b ~ P of stream 0 (used for every stream), unsorted. → [M].

    The published code then draws each sample's place inside its bin from a one-category
    distribution that it builds on the CPU (so the place is always the bin's left edge): M more
    draws that change nothing but the state of the CPU generator. They are made here too, so that
    a run seeded as the published one draws the same samples chunk after chunk: from
    ``generator`` when it is a CPU generator, else from torch's default CPU generator (as the
    published code does when its histogram, and so its first draw, is on CUDA).
    """
    bins = torch.multinomial(_drawable(total_mass(hist)[0]), count, replacement=True, generator=generator)
    offsets_from = generator if generator is not None and generator.device.type == "cpu" else None
    torch.multinomial(torch.ones(1, 1), count, replacement=True, generator=offsets_from)
    return bins


def sample_points(idx: torch.Tensor, frac: torch.Tensor, bins: int) -> torch.Tensor:
    """Time of each sample, (idx + frac) / K, float64."""
    return (idx.to(torch.float64) + frac) / bins


