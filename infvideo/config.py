"""Validated configuration of a long-term memory (SPEC sections 2-8).

A :class:`MemoryConfig` is frozen and hashable: every constant derived from it (positions, bin
maps, ridge matrices, quadrature weights) is cached under it, so nothing is rebuilt per call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

BASES = ("rectangular", "gaussian")
SAMPLINGS = ("quantile", "multinomial", "upstream")
PRESETS = ("exact", "paper")
DENSITIES = ("gibbs", "gaussian")


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:,} (its constants would not fit in memory), got {value:,}")
    return value


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


# Ranges that keep the arithmetic sound and the constants within memory (stated in
# LongTermMemory's docstring). The dense constants are [P, N] and [T, N] float64 matrices, so the
# upper bounds keep each under 2 GiB (4,096 × 65,536 × 8 bytes) instead of letting a typo hang
# the process building them.
MAX_NUM_BASIS = 4096
MAX_PAST_SAMPLES = 65536
MAX_QUAD_POINTS = 65536
# A positive ridge below this makes 1/λ (empty bins) and the Gaussian system's inverse overflow
# or lose every digit in float32; λ = 0 (a pseudo-inverse, empty bins read as zero) stays allowed.
MIN_RIDGE = 1e-6
# ψ's height is 1/(σ√2π): below this ψ² and the scores leave float32's range.
MIN_SIGMA = 1e-4
# Gauss–Legendre nodes per panel of the exact preset's Gaussian quadrature (SPEC section 8): with
# the default T = 1,000 nodes (125 panels) the context is within 1e-4 of the converged integral on
# sharp densities, where the trapezoid on as many points is not (bench/results/cpu_quadrature_accuracy.md).
PANEL_NODES = 8

@dataclass(frozen=True)
class MemoryConfig:
    """Everything that fixes the memory's constants; see ``LongTermMemory`` for the meaning."""

    num_basis: int = 256
    tau: float = 0.75
    past_samples: int = 512
    ridge: float = 0.5
    basis: str = "rectangular"
    sigmas: tuple = (0.005, 0.01)
    sticky: bool = True
    sampling: str = "quantile"
    preset: str = "exact"
    quad_points: int = 1000
    density: str = "gibbs"

    def __post_init__(self):
        _check_int("num_basis", self.num_basis, 1, MAX_NUM_BASIS)
        _check_int("past_samples", self.past_samples, 1, MAX_PAST_SAMPLES)
        _check_int("quad_points", self.quad_points, 2, MAX_QUAD_POINTS)
        tau = _check_real("tau", self.tau)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must lie in (0, 1), got {tau}")
        ridge = _check_real("ridge", self.ridge)
        if ridge != 0.0 and not ridge >= MIN_RIDGE:
            raise ValueError(f"ridge must be 0 or >= {MIN_RIDGE:g} (a smaller penalty leaves the fit "
                             f"ill-conditioned in float32), got {ridge}")
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "ridge", ridge)
        _check_choice("basis", self.basis, BASES)
        _check_choice("sampling", self.sampling, SAMPLINGS)
        _check_choice("preset", self.preset, PRESETS)
        _check_choice("density", self.density, DENSITIES)
        if not isinstance(self.sticky, bool):
            raise TypeError(f"sticky must be a bool, got {type(self.sticky).__name__}")
        try:
            sigmas = tuple(_check_real("sigmas", s) for s in self.sigmas)
        except TypeError as err:
            raise TypeError(f"sigmas must be a sequence of positive numbers ({err})") from None
        if not sigmas or any(s <= 0.0 for s in sigmas):
            raise ValueError(f"sigmas must be a non-empty sequence of positive numbers, got {self.sigmas}")
        if any(s < MIN_SIGMA for s in sigmas):
            raise ValueError(f"sigmas must each be >= {MIN_SIGMA:g} (a narrower Gaussian overflows float32), "
                             f"got {self.sigmas}")
        object.__setattr__(self, "sigmas", sigmas)
        if self.basis == "gaussian" and self.num_basis % len(sigmas):
            raise ValueError(
                f"num_basis ({self.num_basis}) must be a multiple of len(sigmas) ({len(sigmas)}) "
                "for the gaussian basis")
        if self.density == "gaussian" and self.basis != "gaussian":
            raise ValueError("density='gaussian' needs basis='gaussian'")

    @property
    def quad_panels(self) -> int | None:
        """Equal panels K = ⌈T / 8⌉ of the Gauss–Legendre rule, which the Gibbs density over the
        Gaussian basis uses under the exact preset (8 nodes each: T nodes when T is a multiple of
        8, else the next multiple, never fewer); None where the rule is the paper preset's
        trapezoid or no quadrature runs."""
        if self.basis != "gaussian" or self.density != "gibbs" or self.preset != "exact":
            return None
        return -(-self.quad_points // PANEL_NODES)

    @property
    def sticky_bins(self) -> int:
        """Length K of the per-stream sticky statistic kept between steps: 127 (upstream sampler),
        the N bins (rectangular basis), the K Gauss–Legendre panels (Gaussian basis, exact preset,
        Gibbs density) or the T − 1 intervals of the trapezoid grid / the density's edges."""
        if self.sampling == "upstream":
            return 127
        if self.basis == "rectangular":
            return self.num_basis
        panels = self.quad_panels
        return self.quad_points - 1 if panels is None else panels
