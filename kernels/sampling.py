"""Sticky quantile sampling: u_i = F⁻¹((i - ½)/M) from per-group bin masses.

One program per (stream, run of blocks of BLOCK_M samples): it loads the G groups of masses [G, K]
in one tile, adds them in float64 (so the bins agree with the reference's float64 search), forms
the CDF and finds each sample's bin by a vectorised binary search over it (searchsorted, right
side: the number of CDF values not above the level). Output is sorted by construction: levels
increase with i. Kept apart from the consolidation so the CDF is not rebuilt in every program of
that much larger grid. Measured on the H100 (K = 256, M = 512), the search beat counting with a
[16, K] comparison per block of samples at every stream count, by up to 4x at S = 64 (one program
per stream with a [512, 256] comparison tile spilled, several times slower still).

Two outputs share that search: the bins alone (rectangular basis: the consolidation reads old
bins) and, for a smooth basis, the sample times in float64, each placed inside its bin by the
piecewise-linear CDF (the Gaussian consolidation evaluates ψ at them: ``gaussian_fit.py``).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, gdc_launch_dependents, gdc_wait, next_power_of_2, programmatic_options


@triton.jit
def _stream_masses(mass_ptr, s, K, G, stride_ms, stride_mg, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
    # Stream s's masses summed over groups [BLOCK_K] and their CDF (padded with +inf), float64.
    offs_g = tl.arange(0, BLOCK_G)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    # All groups in one load; groups beyond BLOCK_G (rare: G > 64) in further loads.
    weight = tl.zeros([BLOCK_K], dtype=tl.float64)
    for g0 in range(0, G, BLOCK_G):
        tile = tl.load(mass_ptr + s * stride_ms + (g0 + offs_g)[:, None] * stride_mg + offs_k[None, :],
                       mask=((g0 + offs_g)[:, None] < G) & mask_k[None, :], other=0.0)
        weight += tl.sum(tile.to(tl.float64), axis=0)
    cdf = tl.cumsum(weight, axis=0)
    total = tl.max(tl.where(mask_k, cdf, 0.0), axis=0)
    return weight, tl.where(mask_k, cdf, float("inf")), total


@triton.jit
def _quantile_bins_of(cdf, level, K, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, SEARCH_STEPS: tl.constexpr):
    # Binary search for the number of CDF values not above each level (searchsorted, right
    # side): log2(BLOCK_K) + 1 gathers instead of a [BLOCK_M, BLOCK_K] comparison; clamped to K-1.
    lo = tl.zeros([BLOCK_M], dtype=tl.int32)
    hi = tl.zeros([BLOCK_M], dtype=tl.int32) + BLOCK_K
    for _ in tl.static_range(SEARCH_STEPS):
        open_range = lo < hi
        mid = (lo + hi) // 2
        right = tl.gather(cdf, tl.minimum(mid, BLOCK_K - 1), 0) <= level
        lo = tl.where(open_range & right, mid + 1, lo)
        hi = tl.where(open_range & ~right, mid, hi)
    return tl.minimum(lo, K - 1)


@triton.jit
def _quantile_kernel(mass_ptr, out_ptr, K, G, M, BLOCKS_PER_PROGRAM, stride_ms, stride_mg, stride_os,
                     POINTS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
                     SEARCH_STEPS: tl.constexpr, PDL: tl.constexpr):
    # Each sample's bin, or with POINTS its time u_i = (bin + fraction) / K, the fraction where the
    # level falls between the CDF below the bin and the bin's own mass
    # (reference.sticky.quantile_samples and sample_points).
    s = tl.program_id(0).to(tl.int64)
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
    weight, cdf, total = _stream_masses(mass_ptr, s, K, G, stride_ms, stride_mg, BLOCK_G, BLOCK_K)
    first = tl.program_id(1) * BLOCKS_PER_PROGRAM
    for b in range(first, first + BLOCKS_PER_PROGRAM):
        rows = b * BLOCK_M + tl.arange(0, BLOCK_M)
        level = (rows.to(tl.float64) + 0.5) / M * total
        bins = _quantile_bins_of(cdf, level, K, BLOCK_K, BLOCK_M, SEARCH_STEPS)
        if POINTS:
            below = tl.where(bins > 0, tl.gather(cdf, tl.maximum(bins - 1, 0), 0), 0.0)
            inside = tl.gather(weight, bins, 0)
            fraction = tl.where(inside > 0, (level - below) / tl.where(inside > 0, inside, 1.0), 0.0)
            fraction = tl.minimum(tl.maximum(fraction, 0.0), 1.0)
            tl.store(out_ptr + s * stride_os + rows, (bins.to(tl.float64) + fraction) / K, mask=rows < M)
        else:
            tl.store(out_ptr + s * stride_os + rows, bins, mask=rows < M)


# About two programs per SM of an H100: each program rebuilds its stream's CDF, so no more than
# fill the GPU (one program per 16 samples, 2,048 at S = 64, was several times slower).
PROGRAMS_WANTED = 264

# Warps per program. The one-stream step waits on this kernel, whose time there is the latency of
# its reductions, scan and search steps across the warps: on an H200 at S = 1, 4 warps took less
# than 8, 2 or 1 (bench/README.md, "Issue 22, eleventh session").
CONFIG = {"num_warps": 4}

_launch_quantile = CachedLaunch(_quantile_kernel)


@functools.lru_cache(maxsize=256)
def _search_layout(streams: int, groups: int, bins: int, num_samples: int):
    """(grid, blocks per program, constexprs) of a search over masses [S, G, K] for M samples."""
    block_k = next_power_of_2(bins)
    block_m = min(next_power_of_2(num_samples), 128)
    blocks = cdiv(num_samples, block_m)
    # Enough programs to fill the GPU, and no more: each one rebuilds its stream's CDF.
    per_program = cdiv(blocks, min(blocks, cdiv(PROGRAMS_WANTED, streams)))
    meta = dict(BLOCK_G=min(64, next_power_of_2(groups)), BLOCK_K=block_k, BLOCK_M=block_m,
                SEARCH_STEPS=block_k.bit_length())  # log2(BLOCK_K) + 1 halvings close every range
    return (streams, cdiv(blocks, per_program)), per_program, meta


def _quantile(mass: torch.Tensor, num_samples: int, points: bool) -> torch.Tensor:
    s, g, k = mass.shape
    out = torch.empty(s, num_samples, device=mass.device, dtype=torch.float64 if points else torch.int32)
    grid, per_program, meta = _search_layout(s, g, k, num_samples)
    pdl = programmatic_options(mass.device)
    _launch_quantile(grid, mass, out, k, g, num_samples, per_program, mass.stride(0), mass.stride(1), out.stride(0),
                     POINTS=points, **meta, **pdl, num_warps=CONFIG["num_warps"])
    return out


@on_input_device
def quantile_bins(mass: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sample bins [S, M] (int32, sorted) from masses [S, G, K] (any float dtype, last stride 1)."""
    return _quantile(mass, num_samples, False)


@on_input_device
def quantile_points(mass: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Sample times [S, M] (float64, sorted) from masses [S, G, K] (any float dtype, last stride 1):
    ``reference.sticky.sample_points`` of ``quantile_samples``, the bins found as by
    :func:`quantile_bins`."""
    return _quantile(mass, num_samples, True)
