"""One memory step on the fused ops: consolidate (one pass over the tokens), K/V projections on
cuBLAS, attention with the sticky statistic in the same pass."""
from __future__ import annotations

import torch

from ..config import MemoryConfig
from ..reference import sticky
from ..reference.attention import GaussianDensity, Quadrature, attention_constants
from ..reference.fit import SegmentedFit, consolidation_fit, first_fit, on_device
from ..reference.pooling import pool_frames
from ..reference.step import attend, consolidate_chunk, past_samples, upstream_statistic
from .quadrature_attention import quadrature_attention, quadrature_constants
from .rect_consolidate import plan_on, rect_consolidate
from .slot_attention import slot_attention


def _fused_consolidation(cfg: MemoryConfig, frames, past, filled, stats, generator):
    length, device = frames.shape[1], frames.device
    first, later = first_fit(cfg, length), consolidation_fit(cfg, length)
    if not (isinstance(first, SegmentedFit) and isinstance(later, SegmentedFit)):
        return None
    # Both plans are fetched every call (cached) so the first eager step leaves everything a
    # CUDA graph capture of a later step needs on the device.
    first_plan, later_plan = plan_on(first, device), plan_on(later, device)
    if past is None or filled is not None:
        start = rect_consolidate(frames, None, first_plan)
        if past is None:
            return start
    if cfg.sticky and cfg.sampling == "quantile":
        coef = rect_consolidate(frames, past, later_plan, mass=stats, num_samples=cfg.past_samples)
    else:
        samples = past_samples(cfg, stats, torch.float32, device, generator)
        if samples.bins is None:
            return None
        coef = rect_consolidate(frames, past, later_plan, sample_bins=samples.bins)
    return coef if filled is None else torch.where(filled[:, None, None], coef, start)


def _project(proj, coef: torch.Tensor) -> torch.Tensor:
    weight = getattr(proj, "weight", None)
    return proj(coef if weight is None else coef.to(weight.dtype))


def fused_step(cfg: MemoryConfig, frames: torch.Tensor, query: torch.Tensor, proj_key, proj_value, num_heads: int,
               past: torch.Tensor | None, filled: torch.Tensor | None, stats: torch.Tensor | None,
               generator: torch.Generator | None = None, keep_stats: bool = True):
    """(context [S, Q, D], coefficients [S, N, e] fp32, sticky statistic [S, G, K] or None).

    frames are the raw chunk ([S, L, e] or tokens); past / filled / stats as for
    ``reference.consolidate_chunk``; inputs are checked by LongTermMemory. No host synchronisation.
    """
    coef = None
    if cfg.basis == "rectangular":
        coef = _fused_consolidation(cfg, frames, past, filled, stats, generator)
    if coef is None:
        pooled = pool_frames(frames, torch.float32)
        coef = consolidate_chunk(cfg, pooled, past, filled, stats, generator)
    const = attention_constants(cfg)
    if isinstance(const, GaussianDensity):
        context, new_stats = attend(cfg, coef, query.to(torch.float32), proj_key, proj_value, num_heads, keep_stats)
        return context.to(query.dtype), coef, new_stats
    keys, values = _project(proj_key, coef), _project(proj_value, coef)
    want_mass = keep_stats and cfg.sampling != "upstream"
    if isinstance(const, Quadrature):
        quad = quadrature_constants(cfg, query.device)
        context, density = quadrature_attention(query, keys, values, num_heads, quad.mu, quad.sigma, quad.grid,
                                                quad.log_weight, write_density=want_mass)
        new_stats = sticky.interval_mass(density, quad.gaps) if want_mass else None
    else:
        const = on_device(const, query.device, torch.float32)
        null = None if const.null_log_weight is None else float(const.null_log_weight)
        context, mass = slot_attention(query, keys, values, num_heads, const.log_weight, null)
        new_stats = mass if want_mass else None
    if keep_stats and cfg.sampling == "upstream":
        d = query.shape[-1] // num_heads
        qh = query.reshape(query.shape[0], query.shape[1], num_heads, d).transpose(1, 2).to(torch.float32)
        kh = keys.reshape(keys.shape[0], keys.shape[1], num_heads, d).transpose(1, 2).to(torch.float32)
        new_stats = upstream_statistic(cfg, torch.matmul(qh, kh.transpose(-1, -2)) / d ** 0.5)
    return context, coef, new_stats
