"""Time positions on [0, 1] used by the memory (SPEC sections 4, 6 and 8).

Every set of positions is kept two ways: as exact rationals (``exact`` preset; bins are then
found with integer arithmetic, so a position on a bin edge lands where the maths says; real
parameters such as τ enter as the decimal the user wrote, see ``as_written``) and as the
float32 values the published code computes (``paper`` preset; bins are then found by the same
float32 comparisons it makes). ``values`` is the float64 view used for smooth bases.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Positions:
    """Points on the time axis: float64 ``values`` [P] and, when known, exact ``fractions``."""

    values: torch.Tensor
    # Exact positions are int64 numerators and denominators [P] (``ratios``), built without a
    # Python loop; every denominator is below RATIONAL_LIMIT, so that numerator·N stays within
    # int64 for N ≤ 2**14 (MAX_NUM_BASIS is 2**12). Only where τ's decimal is too long for that
    # are they Fractions (``_fractions``), built one by one.
    _fractions: tuple | None = None
    ratios: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.values.numel()

    @property
    def fractions(self) -> tuple | None:
        """The exact positions as Fractions (from ``ratios`` on demand: a Python loop), None for
        float32 positions."""
        if self.ratios is not None:
            return tuple(Fraction(n, d) for n, d in zip(*(part.tolist() for part in self.ratios)))
        return self._fractions


def as_written(value: float) -> Fraction:
    """The rational a user meant by a float: the shortest decimal that reads back as it (0.7 → 7/10).

    ``Fraction(0.7)`` is the binary double nearest 0.7 (0.6999999999999999555…), which moves points
    that the maths puts on a bin edge (τ + (1 − τ)·k/L = n/N) into the bin below.
    """
    return Fraction(repr(float(value)))


def _from_fractions(fracs) -> Positions:
    fracs = tuple(fracs)
    return Positions(torch.tensor([float(f) for f in fracs], dtype=torch.float64), fracs)


RATIONAL_LIMIT = 2 ** 48


def _from_ratios(numerators: torch.Tensor, denominators: torch.Tensor) -> Positions:
    """Exact positions n_j / d_j from int64 tensors (d_j < RATIONAL_LIMIT, so the float64 quotient is
    the correctly rounded value, as ``float(Fraction)`` gives)."""
    return Positions(numerators.double() / denominators.double(), None, (numerators, denominators))


def _ratio_segments(*segments) -> Positions:
    """Positions from (numerators, denominator) pairs, one common denominator per segment."""
    nums = torch.cat([num for num, _ in segments])
    dens = torch.cat([torch.full_like(num, den) for num, den in segments])
    return _from_ratios(nums, dens)


def _from_float32(values: torch.Tensor) -> Positions:
    return Positions(values.to(torch.float32).to(torch.float64), None)


def _paper_first_chunk(length: int) -> torch.Tensor:
    # The published code builds a padded grid on [-0.5, 1.5] and keeps its middle `length` points.
    if length % 2:
        shift = 1 / float(length)
        grid = torch.linspace(-0.5 + shift, 1.5 - shift, 2 * length - 1)
        start = (length - 1) // 2
    else:
        shift = 1 / float(2 * length)
        grid = torch.linspace(-0.5 + shift, 1.5 - shift, 2 * length)
        start = length // 2
    return grid[start:start + length]


@lru_cache(maxsize=256)
def first_chunk(length: int, preset: str) -> Positions:
    """Positions of the first chunk's frames: (j + 1/2) / L, j = 0 … L-1."""
    if preset == "paper":
        return _from_float32(_paper_first_chunk(length))
    return _ratio_segments((torch.arange(1, 2 * length, 2), 2 * length))


@lru_cache(maxsize=256)
def consolidation(samples: int, length: int, tau: float, preset: str) -> Positions:
    """Positions of M past samples squeezed into [0, τ] followed by L frames in [τ, 1]."""
    fast = _exact_consolidation(samples, length, tau) if preset == "exact" else None
    if fast is not None:
        return fast
    if preset == "paper":
        past = torch.arange(1, samples + 1).float() * tau / samples
        new = tau + (1 - tau) * (torch.arange(samples + 1, length + samples + 1).float() - samples) / length
        return _from_float32(torch.cat([past, new]))
    t = as_written(tau)
    past = (t * Fraction(2 * i - 1, 2 * samples) for i in range(1, samples + 1))
    new = (t + (1 - t) * Fraction(2 * j - 1, 2 * length) for j in range(1, length + 1))
    return _from_fractions([*past, *new])


def _exact_consolidation(samples: int, length: int, tau: float) -> Positions | None:
    """τ(2i − 1)/(2M) and τ + (1 − τ)(2j − 1)/(2L) as int64 ratios; None when τ's denominator is too
    large for them (then the Fraction path below builds them one by one)."""
    t = as_written(tau)
    p, q = t.numerator, t.denominator
    if 2 * max(samples, length) * q >= RATIONAL_LIMIT:
        return None
    odd_past, odd_new = torch.arange(1, 2 * samples, 2), torch.arange(1, 2 * length, 2)
    return _ratio_segments((p * odd_past, 2 * samples * q), (2 * p * length + (q - p) * odd_new, 2 * length * q))


@lru_cache(maxsize=64)
def uniform_samples(samples: int, tau: float, preset: str) -> Positions:
    """Where the old signal is read when sampling is uniform (sticky off)."""
    if preset == "paper":
        return _from_float32((torch.arange(1, samples + 1).float() * tau / samples) / tau)
    return _ratio_segments((torch.arange(1, 2 * samples, 2), 2 * samples))


@lru_cache(maxsize=64)
def quadrature_grid(points: int, preset: str) -> tuple[Positions, torch.Tensor]:
    """The trapezoid grid linspace(0, 1, T) and its float64 weights ω [T]."""
    if preset == "paper":
        grid = _from_float32(torch.linspace(0, 1, points))
    else:
        grid = _ratio_segments((torch.arange(points), points - 1))
    gaps = grid.values.diff()
    weights = torch.zeros(points, dtype=torch.float64)
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    return grid, weights


@lru_cache(maxsize=8)
def upstream_histogram_grid() -> tuple[Positions, Positions]:
    """The published sticky sampler's 129-point grid: (integration grid, draw points b/128)."""
    draws = torch.linspace(0, 1, 129)
    grid = draws.clone()
    grid[0] = -0.000001
    grid[-1] = 1.000001
    return _from_float32(grid), _from_float32(draws)
