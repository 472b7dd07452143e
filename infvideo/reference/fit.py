"""Ridge regression of a signal onto the basis (SPEC section 5) and its cached constants.

The positions of a fit depend only on the configuration and the chunk length, so every constant is
built once (float64 on the CPU) and cached; :func:`on_device` keeps one copy per device and dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache

import torch

from .._lru import LRUCache
from ..config import MemoryConfig
from . import positions as pos
from .basis import gaussian_parameters, gaussian_values, rectangular_bins, rectangular_membership


@dataclass(frozen=True)
class SegmentedFit:
    """Rectangular fit where every position lies in at most one bin.

    B_n = scale_n · Σ_{j: bins_j = n} X_j, scale_n = 1 / (c_n + λ), c_n = positions in bin n.
    ``past_bins`` [M] (None for a first chunk) and ``frame_bins`` [L] hold the target bin of
    each position, -1 for a position in no bin (dropped: the paper preset's frame at t = 1, or a
    past sample in a float32 gap between two bins); ``frame_keep`` / ``past_keep`` list the
    positions that land in a bin, None when all do (the common case, which then needs no gather).
    """

    past_bins: torch.Tensor | None
    frame_bins: torch.Tensor
    frame_keep: torch.Tensor | None
    scale: torch.Tensor
    past_keep: torch.Tensor | None = None


@dataclass(frozen=True)
class DenseFit:
    """General fit B = Gᵀ X, with G = Fᵀ(FFᵀ + λI)⁻¹ split into past [M, N] and frame [L, N] rows."""

    past_g: torch.Tensor | None
    frame_g: torch.Tensor


def _padded(values: torch.Tensor) -> torch.Tensor:
    """Zero-valued pad positions continuing the grid's end spacings out to [-0.5, 1.5]."""
    if values.numel() < 2:
        step_lo = step_hi = 1.0
    else:
        step_lo = float(values[1] - values[0])
        step_hi = float(values[-1] - values[-2])
    left = float(values[0]) - step_lo * torch.arange(1, int((float(values[0]) + 0.5) / step_lo) + 1,
                                                     dtype=torch.float64)
    right = float(values[-1]) + step_hi * torch.arange(1, int((1.5 - float(values[-1])) / step_hi) + 1,
                                                       dtype=torch.float64)
    return torch.cat([left.flip(0), right])


def ridge_matrix(design: torch.Tensor, pads: torch.Tensor | None, ridge: float) -> torch.Tensor:
    """G = F_realᵀ-rows of Fᵀ(FFᵀ + λI)⁻¹ in float64, by a Cholesky solve of the N×N system.

    design: ψ at the real positions, [P, N]; pads: ψ at zero-valued pad positions, [P_pad, N].
    """
    full = design if pads is None else torch.cat([design, pads])
    system = full.T @ full
    if ridge > 0:
        system = system + ridge * torch.eye(system.shape[0], dtype=system.dtype)
        factor = torch.linalg.cholesky(system)
        return torch.cholesky_solve(design.T, factor).T
    return design @ torch.linalg.pinv(system, hermitian=True)


def _fit_from_positions(cfg: MemoryConfig, points: pos.Positions, past: int):
    n = cfg.num_basis
    if cfg.basis == "rectangular":
        bins = rectangular_bins(points, n)
        if bins is not None:
            counts = torch.bincount(bins[bins >= 0], minlength=n).to(torch.float64)
            denom = counts + cfg.ridge
            scale = torch.where(denom > 0, 1.0 / denom.clamp_min(1e-300), torch.zeros_like(denom))
            def kept(part):
                return None if bool((part >= 0).all()) else (part >= 0).nonzero().flatten()

            frame_bins, past_bins = bins[past:], (bins[:past] if past else None)
            return SegmentedFit(past_bins, frame_bins, kept(frame_bins), scale,
                                None if past_bins is None else kept(past_bins))
        g = ridge_matrix(rectangular_membership(points, n).to(torch.float64), None, cfg.ridge)
    else:
        mu, sigma = gaussian_parameters(n, cfg.sigmas)
        g = ridge_matrix(gaussian_values(points.values, mu, sigma),
                         gaussian_values(_padded(points.values), mu, sigma), cfg.ridge)
    return DenseFit(g[:past] if past else None, g[past:])


@lru_cache(maxsize=256)
def first_fit(cfg: MemoryConfig, length: int):
    """Constants of the fit of a stream's first chunk (L frames at (j + 1/2) / L)."""
    return _fit_from_positions(cfg, pos.first_chunk(length, cfg.preset), 0)


@lru_cache(maxsize=256)
def consolidation_fit(cfg: MemoryConfig, length: int):
    """Constants of the fit of M past samples in [0, τ] and L new frames in [τ, 1]."""
    points = pos.consolidation(cfg.past_samples, length, cfg.tau, cfg.preset)
    return _fit_from_positions(cfg, points, cfg.past_samples)


# Keyed by the constants' identity (they are cached per configuration and chunk length above),
# so bounded like them: a cache that outlived its keys would keep every length ever seen.
_device_cache = LRUCache(1024)


def derived(cache, constants, key: tuple, build):
    """``build(constants, *key)``, kept in ``cache`` under the identity of the (cached, long-lived)
    host ``constants`` and ``key``; an entry whose constants were freed and their id reused is
    rebuilt."""
    hit = cache.get((id(constants), *key))
    if hit is None or hit[0] is not constants:
        hit = (constants, build(constants, *key))
        cache[(id(constants), *key)] = hit
    return hit[1]


def _moved(constants, device: torch.device, dtype: torch.dtype):
    def move(value):
        if is_dataclass(value) and not isinstance(value, type):
            return on_device(value, device, dtype)
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)

    return type(constants)(**{f.name: move(getattr(constants, f.name)) for f in fields(constants)})


def on_device(constants, device: torch.device, dtype: torch.dtype):
    """The same constants with float tensors cast to ``dtype`` and all moved to ``device``, cached."""
    return derived(_device_cache, constants, (device, dtype), _moved)
