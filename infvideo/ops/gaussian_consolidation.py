"""The Gaussian step's consolidation on Triton kernels (eager, outside autograd).

B = G_framesᵀ pool(tokens) + (G_pastᵀ Ψ_u) B_past in three kernels: the sticky sample times
(``sampling.quantile_points``), the past map G_pastᵀ Ψ_u with ψ evaluated inside the product
(``gaussian_fit.sample_mix``, or ``products.head_products`` on a materialised Ψ_u for the other
samplers), then one pass over the tokens that pools them, fits them and adds the map's product
(``dense_consolidate``). ``ops.step.fused_step`` calls :func:`gaussian_consolidation`, and
:func:`dense_fit_products` as ``reference.consolidate_chunk``'s dense fit elsewhere.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import backends
from ..config import MemoryConfig
from ..reference.basis import gaussian_parameters
from ..reference.fit import DenseFit, consolidation_fit, first_fit, on_device
from ..reference.step import past_samples, where_filled


# The past map's product tiles (products.head_products): the sweep of bench/tune_gaussian_consolidation.py.
PAST_MAP_TILES = (128, 64, 32, 4, 3)


def past_map(past_g: torch.Tensor, sample_basis: torch.Tensor, streams: int) -> torch.Tensor:
    """G_pastᵀ Ψ_u [S, N, N] on three-TF32 products (``products.head_products``) from the fit's
    past rows [M, N] and ψ at the samples [M, N] or [S, M, N]."""
    products = backends.triton_kernels()["products"]
    samples, n = past_g.shape
    mix = torch.empty(streams, n, n, device=past_g.device, dtype=torch.float32)

    def strides(x, transposed=False):  # (stream, head, row, column), of xᵀ when transposed
        rows, columns = (x.stride(-1), x.stride(-2)) if transposed else (x.stride(-2), x.stride(-1))
        return (x.stride(0) if x.ndim == 3 else 0, 0, rows, columns)
    products.head_products(past_g, strides(past_g, True), sample_basis, strides(sample_basis), mix, strides(mix), n,
                           n, samples, 1, streams, products.precision(past_g.device), tiles=PAST_MAP_TILES)
    return mix


def dense_fit_products(frames: torch.Tensor, past: torch.Tensor | None, sample_basis: torch.Tensor | None,
                       fit: DenseFit) -> torch.Tensor:
    """``reference.consolidate_dense`` on Triton kernels, float32 frames [S, L, e] and past
    [S, N, e]: B = G_framesᵀ X + (G_pastᵀ Ψ_u) B_past, the past part through its [N, N] map (N(M + e)·N
    multiply-adds per stream against 2MNe for G_pastᵀ (Ψ_u B_past), never more when M ≥ N and
    e ≥ N, the configurations'), both on three-TF32 tensor-core products."""
    kernels = backends.triton_kernels()
    mix = None if past is None else past_map(fit.past_g, sample_basis, frames.shape[0])
    return kernels["dense_consolidate"].dense_consolidate(frames, fit.frame_g, mix, past,
                                                          kernels["products"].precision(frames.device))[0]


@lru_cache(maxsize=64)
def sample_constants(num_basis: int, sigmas: tuple, device: torch.device) -> tuple:
    """(μ in float64, 1/σ and 1/(σ√2π) in float32) of a Gaussian basis on ``device``: what
    ``gaussian_fit.sample_mix`` evaluates ψ from."""
    mu, sigma = gaussian_parameters(num_basis, sigmas)
    peak = 1 / (sigma * math.sqrt(2 * math.pi))
    return mu.to(device), (1 / sigma).to(device, torch.float32), peak.to(device, torch.float32)


def gaussian_consolidation(cfg: MemoryConfig, frames: torch.Tensor, past: torch.Tensor | None,
                           filled: torch.Tensor | None, stats: torch.Tensor | None, generator: torch.Generator | None,
                           cast_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.consolidate_chunk`` of a Gaussian basis on Triton kernels (eager, outside
    autograd), from the raw chunk: each stream's map from its old coefficients, G_pastᵀ Ψ_u [N, N]
    (with sticky quantile sampling from the sample times, ``sampling.quantile_points``, and ψ
    evaluated inside the product, ``gaussian_fit.sample_mix``: Ψ_u never reaches memory), then
    one pass over the tokens that pools them, fits them and adds the map's product
    (``dense_consolidate``). Returns (B float32, B in ``cast_dtype``), as ``ops.step`` takes
    the rectangular kernels' (``_fused_consolidation``)."""
    kernels = backends.triton_kernels()
    length, device = frames.shape[1], frames.device
    precision = kernels["products"].precision(device)
    consolidate = kernels["dense_consolidate"].dense_consolidate
    # All constants fetched on every call, as consolidate_chunk does: a CUDA graph captured after
    # one eager step finds them on the device.
    first = on_device(first_fit(cfg, length), device, torch.float32)
    fit = on_device(consolidation_fit(cfg, length), device, torch.float32)
    constants = sample_constants(cfg.num_basis, cfg.sigmas, device)
    start = None  # a new video's coefficients, for the streams that need them
    if past is None or filled is not None:
        start = consolidate(frames, first.frame_g, None, None, precision, cast_dtype)
        if past is None:
            return start
    if cfg.sticky and cfg.sampling == "quantile":
        mass = (stats if stats.dim() == 3 else stats[:, None]).contiguous()
        points = kernels["sampling"].quantile_points(mass, cfg.past_samples)
        mix = kernels["gaussian_fit"].sample_mix(fit.past_g, points, *constants, precision)
    else:
        mix = past_map(fit.past_g, past_samples(cfg, stats, torch.float32, device, generator).dense, frames.shape[0])
    later = consolidate(frames, fit.frame_g, mix, past.to(torch.float32), precision, cast_dtype)
    return where_filled(filled, later, start)
