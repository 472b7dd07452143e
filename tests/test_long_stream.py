"""A stream of 10⁶ frames through LongTermMemory: finite outputs, constant memory, no drift.

The bound (rectangular basis, ridge λ > 0; SPEC sections 5-6). Every consolidation refits the
coefficients to values X_j that are either the chunk's frames x or samples of the old signal,
and a sample of a rectangular signal is a row of the old coefficients (or 0). With c_n the number
of positions in bin n,

    B_n = (Σ_{j in bin n} X_j) / (c_n + λ),   so   |B_n| ≤ c_n / (c_n + λ) · max_{j in bin n} |X_j|

column by column. Hence, per chunk t, with ρ_t = max_n c_n / (c_n + λ) = max_n (1 − λ·scale_n) < 1
read from the chunk's fit,

    max|B_t| ≤ ρ_t · max(max|B_{t−1}|, max|x_t|),

and by induction max|B_t| ≤ max over every frame seen so far of |x|: the memory can only shrink
what it is given, never grow it, however long the video. Float32 adds a relative rounding error
of at most (c_n + 1)·2⁻²⁴ ≲ 1e-5 to the sum and the scaling (c_n ≤ (M + L)/N + 1 ≈ 70 here), far
below the shrinkage 1 − ρ_t ≥ λ/(c_max + λ) ≈ 7e-3, so the per-chunk bound is asserted with a
factor 1 + 1e-5 and the cumulative one exactly.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from conftest import random_linear
from infvideo import LongTermMemory
from infvideo.reference.fit import consolidation_fit, first_fit

FRAMES = 10**6
N, M, E, D, H, Q = 64, 128, 16, 16, 2, 4


def _lengths(total: int, gen: torch.Generator, distinct: int = 96) -> list[int]:
    """Chunk lengths in 1…4096 adding up to ``total``: drawn from a pool of ``distinct`` lengths
    (1 and 4096 included, the rest uniform or log-uniform so that short chunks are frequent).
    Each new length builds its fit constants once (exact positions in Python fractions, tens of
    ms at L = 4096), so the pool keeps that cost to a few seconds."""
    pool = {1, 4096}
    while len(pool) < distinct:
        u = float(torch.rand((), generator=gen))
        uniform = float(torch.rand((), generator=gen)) < 0.4
        pool.add(max(1, min(4096, 1 + int(u * 4096) if uniform else int(math.exp(u * math.log(4096))))))
    pool = sorted(pool)
    lengths = [1, 4096]
    while sum(lengths) < total:
        lengths.append(pool[int(torch.randint(len(pool), (), generator=gen))])
    lengths[-1] -= sum(lengths) - total
    order = torch.randperm(len(lengths), generator=gen).tolist()
    return [lengths[i] for i in order if lengths[i] > 0]


def _shrink(memory: LongTermMemory, length: int, first: bool) -> float:
    """ρ = max_n c_n / (c_n + λ) of this chunk's fit (scale_n = 1 / (c_n + λ))."""
    cfg = memory.config
    fit = first_fit(cfg, length) if first else consolidation_fit(cfg, length)
    return float((1 - cfg.ridge * fit.scale).max())


@pytest.mark.slow
def test_million_frames_bounded_and_finite():
    gen = torch.Generator().manual_seed(0)
    lengths = _lengths(FRAMES, gen)
    assert sum(lengths) == FRAMES and min(lengths) >= 1 and max(lengths) <= 4096
    proj_key, proj_value = random_linear(E, D, 1), random_linear(E, D, 2)
    memory = LongTermMemory(num_basis=N, past_samples=M, backend="torch")  # exact, quantile sticky, λ = 0.5
    largest_frame, largest_coef, previous = 0.0, 0.0, 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for chunk, length in enumerate(lengths):
            scale = 10.0 ** (6 * float(torch.rand((), generator=gen)) - 3)  # 1e-3 … 1e3
            frames = torch.randn(1, length, E, generator=gen) * scale
            query = torch.randn(1, Q, D, generator=gen)
            context = memory(frames, query, proj_key, proj_value, H)
            assert bool(torch.isfinite(context).all()), f"chunk {chunk}: non-finite context"
            assert memory.coef.shape == (1, N, E) and memory.sticky_stats.shape == (1, H, N)
            frame_max = float(frames.abs().max())
            coef_max = float(memory.coef.abs().max())
            bound = _shrink(memory, length, chunk == 0) * max(previous, frame_max)
            assert coef_max <= bound * (1 + 1e-5), f"chunk {chunk}: max|B| {coef_max} > ρ·max(...) = {bound}"
            largest_frame = max(largest_frame, frame_max)
            assert coef_max <= largest_frame, f"chunk {chunk}: max|B| {coef_max} > max|x| so far {largest_frame}"
            largest_coef, previous = max(largest_coef, coef_max), coef_max
    elapsed = time.perf_counter() - start
    assert bool(torch.isfinite(memory.coef).all()) and bool(torch.isfinite(memory.sticky_stats).all())
    print(f"\n{FRAMES} frames in {len(lengths)} chunks ({len(set(lengths))} lengths in 1…4096) in {elapsed:.1f} s: "
          f"max|B| over the run {largest_coef:.4g} <= max|x| {largest_frame:.4g}; final max|B| {previous:.4g}")
