"""Basis functions ψ(t) ∈ R^N on [0, 1] (SPEC section 4)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .positions import Positions


@lru_cache(maxsize=64)
def paper_bin_bounds(num_basis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin bounds (lo, hi), float32 [N], computed the way the published code computes them."""
    edges = torch.linspace(0, 1, num_basis + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    width = torch.ones(num_basis) / num_basis
    return mid - width / 2, mid + width / 2


def rectangular_membership(points: Positions, num_basis: int) -> torch.Tensor:
    """ψ(points) for N equal bins as a bool matrix [P, N].

    With exact fractions the bin is min(⌊tN⌋, N-1) for t ∈ [0, 1] (integer arithmetic);
    otherwise the float32 rule lo_n ≤ t < hi_n of the paper preset, which can leave t = 1 in no bin.
    """
    if points.ratios is None and points.fractions is None:
        lo, hi = paper_bin_bounds(num_basis)
        t = points.values.to(torch.float32)[:, None]
        return (t >= lo) & (t < hi)
    bins = rectangular_bins(points, num_basis)
    member = torch.zeros(len(points), num_basis + 1, dtype=torch.bool)
    member[torch.arange(len(points)), bins] = True  # bin -1 marks the extra last column
    return member[:, :num_basis]


def rectangular_bins(points: Positions, num_basis: int) -> torch.Tensor | None:
    """The bin of each point (-1 for none) without a [P, N] matrix, or None if a point lies in two.

    Exact positions: min(⌊tN⌋, N-1) for t ∈ [0, 1] in int64 (``Positions.ratios``) or Fractions.
    Float32 positions (paper preset): the bins n with lo_n ≤ t < hi_n form the run between the
    first n with hi_n > t and the last with lo_n ≤ t (both bounds ascend), found by two searches.
    """
    if points.ratios is not None:
        num, den = points.ratios
        inside = (num >= 0) & (num <= den)
        return torch.where(inside, torch.minimum(num * num_basis // den, torch.tensor(num_basis - 1)), -1)
    if points.fractions is not None:
        return torch.tensor([min(t.numerator * num_basis // t.denominator, num_basis - 1) if 0 <= t <= 1 else -1
                             for t in points.fractions], dtype=torch.int64)
    lo, hi = paper_bin_bounds(num_basis)
    if bool((lo.diff() < 0).any() or (hi.diff() < 0).any()):
        return single_bins(rectangular_membership(points, num_basis))
    t = points.values.to(torch.float32)
    last = torch.searchsorted(lo, t, right=True) - 1
    first = torch.searchsorted(hi, t, right=True)
    count = last - first + 1
    if bool((count > 1).any()):
        return None
    return torch.where(count == 1, first, -1)


def single_bins(member: torch.Tensor) -> torch.Tensor | None:
    """The bin of each row of a membership matrix (-1 for none), or None if a row has two."""
    if (member.sum(1) > 1).any():
        return None
    return torch.where(member.any(1), member.to(torch.int8).argmax(1), -1).to(torch.int64)


@lru_cache(maxsize=64)
def gaussian_parameters(num_basis: int, sigmas: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres μ and widths σ (float64 [N]): N/k centres linspace(0, 1), centre-major over σ."""
    centres = torch.linspace(0, 1, num_basis // len(sigmas), dtype=torch.float64)
    mu = centres.repeat_interleave(len(sigmas))
    sigma = torch.tensor(sigmas, dtype=torch.float64).repeat(num_basis // len(sigmas))
    return mu, sigma


@dataclass(frozen=True)
class GaussianBasis:
    """Centres μ and widths σ [N] of a Gaussian basis, as one cacheable constant."""

    mu: torch.Tensor
    sigma: torch.Tensor


@lru_cache(maxsize=64)
def gaussian_basis(num_basis: int, sigmas: tuple) -> GaussianBasis:
    return GaussianBasis(*gaussian_parameters(num_basis, sigmas))


def gaussian_values(t: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ψ_n(t) = 𝒩(t; μ_n, σ_n²) for t [..., P] → [..., P, N]."""
    z = (t[..., None] - mu) / sigma
    return torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
