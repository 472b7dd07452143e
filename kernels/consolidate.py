"""Fused rectangular consolidation: pool frame tokens, read the sampled old rows, shrunk segmented sum.

One program per (new bin n, stream s, block of BLOCK_E columns). Positions are sorted in time and
bins are monotone in time, so the frames and past samples that land in bin n are a CSR range:
the program reads exactly its own inputs, writes its output once (no atomics, deterministic), and
no [M + L, e] matrix or pooled copy of the frames ever reaches memory. When the bin's frames are
consecutive and each frame's tokens follow each other in memory (FRAME_ROWS, the usual case), the
bin's tokens are one run of rows, read in [BLOCK_R, BLOCK_E] tiles: large loads keep enough bytes
in flight to approach the memory bandwidth, where one small tile per frame did not. Bins without
frames (after the first step, the bins the contracted past fills) only add sampled old rows, three
dependent loads: one program takes a run of them and several column blocks (CONFIG past_bins,
past_blocks), the grid's other programs for them doing nothing, so that fewer short programs
hold the GPU's places.

Past samples (constexpr HAS_PAST) read the old coefficients at given old-bin indices
[S or 1, M] (uniform, quantile, multinomial or upstream sampling), -1 reading zeros. The sticky
quantile bins come from kernels/sampling.py: building the CDF here would repeat it in every
program of this grid (measured on the H100: 3× the whole step at S = 64).

The backward (``rect_consolidate_backward``) runs on the same grid and CSR maps: each program
writes its bin's scaled gradient row to its frames and adds it into the old rows its samples read.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, gdc_launch_dependents, gdc_wait, next_power_of_2, programmatic_options


@triton.jit
def _sample_bins(past_idx_ptr, bins_ptr, k0, p_hi, offs_p):
    """The old bin read by each past sample k0 + offs_p of a new bin's CSR row (−1: none, also
    past the row's end at p_hi)."""
    mask_p = k0 + offs_p < p_hi
    i = tl.load(past_idx_ptr + k0 + offs_p, mask=mask_p, other=0)
    return tl.load(bins_ptr + i, mask=mask_p, other=-1)


@triton.jit
def _store_row(out_ptr, cast_ptr, s, n, offs_e, acc, E, stride_os, stride_on, WRITE_CAST: tl.constexpr):
    """Bin n's new row of stream s in the columns ``offs_e``; with WRITE_CAST also its copy in the
    projections' dtype (cast_ptr's), which saves the K/V product a separate cast pass."""
    mask_e = offs_e < E
    tl.store(out_ptr + s * stride_os + n * stride_on + offs_e, acc, mask=mask_e)
    if WRITE_CAST:
        tl.store(cast_ptr + s * stride_os + n * stride_on + offs_e,
                 acc.to(cast_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask_e)


@triton.jit
def _consolidate_bin(frames_ptr, past_ptr, bins_ptr, out_ptr, cast_ptr, past_idx_ptr, past_start_ptr, frame_idx_ptr,
                     n, s, offs_e, f_lo, f_hi, scale, E, TOKENS, inv_tokens,
                     stride_fs, stride_fl, stride_ft, stride_fe, stride_ps, stride_pn, stride_bs, stride_os, stride_on,
                     HAS_PAST: tl.constexpr, FRAME_ROWS: tl.constexpr, WRITE_CAST: tl.constexpr,
                     WITH_FRAMES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
                     PDL: tl.constexpr, FRAMES_FIRST: tl.constexpr):
    """Bin n's new row of stream s in the columns ``offs_e``: its frames pooled (WITH_FRAMES), its
    sampled old rows added, scaled and stored."""
    mask_e = offs_e < E
    acc = tl.zeros(offs_e.shape, dtype=tl.float32)
    if WITH_FRAMES:
        # Frames of this bin, each pooled over its tokens on the fly.
        offs_t = tl.arange(0, BLOCK_T)
        if FRAME_ROWS:
            # frame_idx is the identity and rows j·T + t are evenly strided: one run of rows.
            base = frames_ptr + s * stride_fs + offs_e[None, :] * stride_fe
            r_hi = f_hi * TOKENS
            part = tl.zeros(offs_e.shape, dtype=tl.float32)
            for r0 in range(f_lo * TOKENS, r_hi, BLOCK_T):
                rows = r0 + offs_t
                tile = tl.load(base + rows[:, None].to(tl.int64) * stride_ft,
                               mask=(rows[:, None] < r_hi) & mask_e[None, :], other=0.0)
                part += tl.sum(tile.to(tl.float32), axis=0)
            acc += part * inv_tokens
            f_hi = f_lo  # the per-frame loop below has nothing left to do
        for k in range(f_lo, f_hi):
            j = tl.load(frame_idx_ptr + k).to(tl.int64)
            base = frames_ptr + s * stride_fs + j * stride_fl + offs_e[None, :] * stride_fe
            part = tl.zeros(offs_e.shape, dtype=tl.float32)
            for t0 in range(0, TOKENS, BLOCK_T):
                rows = t0 + offs_t
                tile = tl.load(base + rows[:, None] * stride_ft, mask=(rows[:, None] < TOKENS) & mask_e[None, :],
                               other=0.0)
                part += tl.sum(tile.to(tl.float32), axis=0)
            acc += part * inv_tokens

    if PDL and FRAMES_FIRST:
        gdc_wait()
        gdc_launch_dependents()
    if HAS_PAST:
        # The bin's samples BLOCK_P at a time (usually all at once): three dependent loads per
        # block (sample slots, their old bins, the rows) instead of three per sample, which left
        # the one-stream step waiting on memory latency. (Loading the slots before the frames
        # measured slower at S = 1: bench/README.md, "Programmatic dependent launches".)
        p_lo = tl.load(past_start_ptr + n)
        p_hi = tl.load(past_start_ptr + n + 1)
        offs_p = tl.arange(0, BLOCK_P)
        for k0 in range(p_lo, p_hi, BLOCK_P):
            src = _sample_bins(past_idx_ptr, bins_ptr + s * stride_bs, k0, p_hi, offs_p)
            read = (src >= 0)[:, None] & mask_e[None, :]  # a sample in no bin (-1) reads zeros
            rows = tl.load(past_ptr + s * stride_ps + tl.maximum(src, 0)[:, None].to(tl.int64) * stride_pn
                           + offs_e[None, :], mask=read, other=0.0)
            acc += tl.sum(rows.to(tl.float32), axis=0)

    _store_row(out_ptr, cast_ptr, s, n, offs_e, acc * scale, E, stride_os, stride_on, WRITE_CAST)


@triton.jit
def _frameless_bins(past_ptr, bins_ptr, out_ptr, cast_ptr, past_idx_ptr, past_start_ptr, scale_ptr, first, s, offs_e,
                    E, N_BINS, stride_ps, stride_pn, stride_bs, stride_os, stride_on, WRITE_CAST: tl.constexpr,
                    BINS: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr, FRAMES_FIRST: tl.constexpr):
    """The new rows of BINS bins from ``first`` on (those below N_BINS), none of which holds a frame,
    in the columns ``offs_e``: every sampled old row of the run in one load (each bin has at most
    BLOCK_P samples), then each bin's sum scaled and stored."""
    if PDL and FRAMES_FIRST:
        gdc_wait()
        gdc_launch_dependents()
    mask_e = offs_e < E
    k_lo = tl.load(past_start_ptr + first)
    k_hi = tl.load(past_start_ptr + tl.minimum(first + BINS, N_BINS))
    offs_k = tl.arange(0, BINS * BLOCK_P)
    src = _sample_bins(past_idx_ptr, bins_ptr + s * stride_bs, k_lo, k_hi, offs_k)
    rows = tl.load(past_ptr + s * stride_ps + tl.maximum(src, 0)[:, None].to(tl.int64) * stride_pn + offs_e[None, :],
                   mask=(src >= 0)[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
    k = k_lo + offs_k
    lo = k_lo  # each bin's samples start where the one before it ends
    for b in tl.static_range(BINS):
        n = first + b
        if n < N_BINS:
            hi = tl.load(past_start_ptr + n + 1)
            acc = tl.sum(tl.where(((k >= lo) & (k < hi))[:, None], rows, 0.0), axis=0) * tl.load(scale_ptr + n)
            _store_row(out_ptr, cast_ptr, s, n, offs_e, acc, E, stride_os, stride_on, WRITE_CAST)
            lo = hi


@triton.jit
def _rect_consolidate_kernel(
    frames_ptr, past_ptr, bins_ptr, out_ptr, cast_ptr,
    past_idx_ptr, past_start_ptr, frame_idx_ptr, frame_start_ptr, scale_ptr,
    E, TOKENS, inv_tokens, N_BINS,
    stride_fs, stride_fl, stride_ft, stride_fe,
    stride_ps, stride_pn, stride_bs, stride_os, stride_on,
    HAS_PAST: tl.constexpr, FRAME_ROWS: tl.constexpr, WRITE_CAST: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, PAST_BLOCKS: tl.constexpr,
    PAST_BINS: tl.constexpr, PDL: tl.constexpr, FRAMES_FIRST: tl.constexpr,
):
    # PDL: launched as a programmatic dependent (kernels/_launch.py). FRAMES_FIRST: the kernel
    # before this one is the sampler that writes sample_bins, so the frames are pooled while it
    # runs and only the past samples wait for it. PAST_BLOCKS × PAST_BINS > 1 (with HAS_PAST): bins
    # without frames, most of them after the first step, are taken PAST_BINS aligned bins and
    # PAST_BLOCKS column blocks per program where a whole run of PAST_BINS holds no frame (else a
    # bin at a time), by the run's first program; the others do nothing. Fewer programs then wait
    # for the sampler, and fewer hold the GPU's places for three dependent loads each.
    if PDL and not FRAMES_FIRST:
        gdc_wait()
        gdc_launch_dependents()
    n = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    block = tl.program_id(2)
    scale = tl.load(scale_ptr + n)
    f_lo = tl.load(frame_start_ptr + n)
    f_hi = tl.load(frame_start_ptr + n + 1)
    with_frames = True  # the bin's program per column block, as without PAST_BLOCKS and PAST_BINS
    if PAST_BLOCKS * PAST_BINS > 1:
        with_frames = f_hi > f_lo
    if with_frames:
        _consolidate_bin(frames_ptr, past_ptr, bins_ptr, out_ptr, cast_ptr, past_idx_ptr, past_start_ptr,
                         frame_idx_ptr, n, s, block * BLOCK_E + tl.arange(0, BLOCK_E), f_lo, f_hi, scale, E,
                         TOKENS, inv_tokens, stride_fs, stride_fl, stride_ft, stride_fe, stride_ps, stride_pn,
                         stride_bs, stride_os, stride_on, HAS_PAST, FRAME_ROWS, WRITE_CAST, True, BLOCK_T,
                         BLOCK_P, PDL, FRAMES_FIRST)
    elif block % PAST_BLOCKS == 0:
        wide = block * BLOCK_E + tl.arange(0, BLOCK_E * PAST_BLOCKS)
        first = n - n % PAST_BINS
        whole_run = False  # the aligned run of PAST_BINS bins from first holds no frame
        if PAST_BINS > 1:
            whole_run = tl.load(frame_start_ptr + tl.minimum(first + PAST_BINS, N_BINS)) == \
                tl.load(frame_start_ptr + first)
        if whole_run:
            if n == first:
                _frameless_bins(past_ptr, bins_ptr, out_ptr, cast_ptr, past_idx_ptr, past_start_ptr, scale_ptr,
                                first, s, wide, E, N_BINS, stride_ps, stride_pn, stride_bs, stride_os, stride_on,
                                WRITE_CAST, PAST_BINS, BLOCK_P, PDL, FRAMES_FIRST)
        else:
            _consolidate_bin(frames_ptr, past_ptr, bins_ptr, out_ptr, cast_ptr, past_idx_ptr, past_start_ptr,
                             frame_idx_ptr, n, s, wide, f_lo, f_hi, scale, E, TOKENS, inv_tokens, stride_fs,
                             stride_fl, stride_ft, stride_fe, stride_ps, stride_pn, stride_bs, stride_os,
                             stride_on, HAS_PAST, FRAME_ROWS, WRITE_CAST, False, BLOCK_T, BLOCK_P, PDL,
                             FRAMES_FIRST)


# Tile shapes, measured on the H100 (bench/tune_consolidate.py); module-level so tuning can vary them.
# S = 64, L = 256, bf16 tokens: 512 columns reach most of the memory bandwidth, ahead of 256
# columns and well ahead of 32-row tiles; narrower column blocks (more programs) win for few
# streams: S = 1, 64 columns on 2 warps ahead of 128 on 4. Rows per tile for fewer than 16 streams
# apart: a 128 × 64 bf16 tile holds 84 registers per thread on sm_90 (ptxas), 32 × 64 holds 38, so
# that all 3,072 programs of the S = 1 step could be resident at once instead of about half of
# them; on an H200 that step was slower with 32 (bench_many_streams_gpu.py --compare rows).
# past_blocks and past_bins (their _few_streams values below 16 streams): bins without frames
# (most bins after the first step) take one program per that many column blocks and aligned bins,
# so that fewer programs wait for the sampler and hold the GPU's places for three dependent loads
# each; the step was faster so at every stream count timed on an H200 (the whole row below 16
# streams, 2 × 2 from 16: bench/README.md, "Issue 22, twelfth session"). Two bins on the whole row
# at few streams spill (ptxas).
CONFIG = {"block_e": 512, "block_e_few_streams": 64, "block_rows": 128, "block_rows_few_streams": 128, "num_warps": 4,
          "num_warps_few_streams": 2, "num_stages": 2, "past_blocks": 2, "past_blocks_few_streams": 16,
          "past_bins": 2, "past_bins_few_streams": 1}


_launch_rect_consolidate = CachedLaunch(_rect_consolidate_kernel)


def _for_streams(name: str, streams: int):
    """CONFIG[name] from 16 streams on, CONFIG[name + "_few_streams"] below."""
    return CONFIG[name if streams >= 16 else name + "_few_streams"]


def _past_bins(streams: int, max_per_bin: int) -> int:
    """Bins without frames per program: CONFIG's, as a power of two, while their samples (at most
    ``max_per_bin`` each) stay one load of at most 32 rows."""
    wanted = next_power_of_2(_for_streams("past_bins", streams))
    return max(1, min(wanted, 32 // next_power_of_2(max(1, max_per_bin))))


def _past_blocks(streams: int, width: int, block_e: int) -> int:
    """Column blocks per program of a bin without frames: CONFIG's, as a power of two (the
    program's columns are one arange) and no more than cover the row."""
    wanted = _for_streams("past_blocks", streams)
    return min(next_power_of_2(wanted), next_power_of_2(cdiv(width, block_e)))


@on_input_device
def rect_consolidate(frames: torch.Tensor, past: torch.Tensor | None, sample_bins: torch.Tensor | None,
                     past_idx: torch.Tensor, past_start: torch.Tensor, frame_idx: torch.Tensor,
                     frame_start: torch.Tensor, scale: torch.Tensor, frames_in_order: bool = False,
                     max_per_bin: int = 1, cast_dtype: torch.dtype | None = None, after_sampler: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused consolidation; inputs are checked by ``infvideo.ops``.

    frames [S, L, T, e] (T = 1 for pooled frames; any strides), past [S, N, e] (last stride 1) with
    sample_bins [S or 1, M] (int32/int64), CSR maps int32, scale [N] fp32. ``frames_in_order``:
    frame_idx is the identity (frames are listed in bin order), so the FRAME_ROWS path may be used;
    ``max_per_bin``: the most past samples any bin receives. ``after_sampler``: the launch just
    before this one on the stream was the sampler's that wrote ``sample_bins``, and nothing else
    writes frames since (a programmatic launch then streams the frames while the sampler runs).
    Returns the new coefficients [S, N, e] in float32, and the same in ``cast_dtype`` (an empty
    tensor when None).
    """
    s, _, tokens, e = frames.shape
    n = scale.numel()
    out = torch.empty(s, n, e, device=frames.device, dtype=torch.float32)
    cast = torch.empty(0 if cast_dtype is None else (s, n, e), device=frames.device,
                       dtype=cast_dtype or torch.float32)
    past_t = past if past is not None else scale
    bins_t = sample_bins if sample_bins is not None else past_start
    frame_rows = frames_in_order and frames.stride(1) == tokens * frames.stride(2)
    block_e = min(_for_streams("block_e", s), next_power_of_2(e))
    block_t = _for_streams("block_rows", s) if frame_rows else min(32, next_power_of_2(tokens))
    grid = (n, s, cdiv(e, block_e))
    pdl = programmatic_options(frames.device)
    _launch_rect_consolidate(grid,
        frames, past_t, bins_t, out, cast if cast_dtype is not None else out,
        past_idx, past_start, frame_idx, frame_start, scale,
        e, tokens, 1.0 / tokens, n,
        frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3),
        past_t.stride(0) if past is not None else 0, past_t.stride(1) if past is not None else 0,
        sample_bins.stride(0) if sample_bins is not None and sample_bins.shape[0] > 1 else 0,
        out.stride(0), out.stride(1),
        HAS_PAST=past is not None, FRAME_ROWS=frame_rows, WRITE_CAST=cast_dtype is not None,
        BLOCK_E=block_e, BLOCK_T=block_t, BLOCK_P=min(64, next_power_of_2(max(1, max_per_bin))),
        PAST_BLOCKS=_past_blocks(s, e, block_e) if past is not None else 1,
        PAST_BINS=_past_bins(s, max_per_bin) if past is not None else 1,
        FRAMES_FIRST=pdl["PDL"] and after_sampler and past is not None, **pdl,
        num_warps=_for_streams("num_warps", s), num_stages=CONFIG["num_stages"],
    )
    return out, cast


@triton.jit
def _rect_consolidate_backward_kernel(
    grad_ptr, bins_ptr, grad_frames_ptr, grad_past_ptr,
    past_idx_ptr, past_start_ptr, frame_idx_ptr, frame_start_ptr, scale_ptr,
    E, inv_tokens, stride_gs, stride_gn, stride_bs, stride_fs, stride_fl, stride_ps, stride_pn,
    HAS_PAST: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # The forward's grid and CSR walk, reversed: program (n, s, column block) reads its bin's
    # gradient row once and writes it to the bin's frames and old rows.
    n = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    offs_e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    g = tl.load(grad_ptr + s * stride_gs + n * stride_gn + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    g = g * tl.load(scale_ptr + n)

    # A frame lies in at most one bin: a plain store, and frames in no bin keep the zeros they
    # were allocated with.
    row = (g * inv_tokens).to(grad_frames_ptr.dtype.element_ty)
    f_lo = tl.load(frame_start_ptr + n)
    f_hi = tl.load(frame_start_ptr + n + 1)
    for k in range(f_lo, f_hi):
        j = tl.load(frame_idx_ptr + k).to(tl.int64)
        tl.store(grad_frames_ptr + s * stride_fs + j * stride_fl + offs_e, row, mask=mask_e)

    if HAS_PAST:
        # Many samples may read one old bin (sticky sampling crowds them where attention was
        # high), from programs of different new bins: atomic float32 adds, so the summation order
        # (and the last bits of the past gradient) may vary between runs on the GPU.
        p_lo = tl.load(past_start_ptr + n)
        p_hi = tl.load(past_start_ptr + n + 1)
        offs_p = tl.arange(0, BLOCK_P)
        for k0 in range(p_lo, p_hi, BLOCK_P):
            src = _sample_bins(past_idx_ptr, bins_ptr + s * stride_bs, k0, p_hi, offs_p)
            write = (src >= 0)[:, None] & mask_e[None, :]  # a sample in no bin (-1) read zeros
            targets = grad_past_ptr + s * stride_ps + tl.maximum(src, 0)[:, None].to(tl.int64) * stride_pn \
                + offs_e[None, :]
            tl.atomic_add(targets, tl.zeros([BLOCK_P, BLOCK_E], dtype=tl.float32) + g[None, :], mask=write)


_launch_rect_consolidate_backward = CachedLaunch(_rect_consolidate_backward_kernel)


@on_input_device
def rect_consolidate_backward(grad: torch.Tensor, sample_bins: torch.Tensor | None, past_idx: torch.Tensor,
                              past_start: torch.Tensor, frame_idx: torch.Tensor, frame_start: torch.Tensor,
                              scale: torch.Tensor, num_frames: int, tokens: int, frames_dtype: torch.dtype,
                              with_past: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the consolidation's backward; arguments come from the op's autograd (``infvideo.ops``).

    grad [S, N, e] fp32 contiguous (∂L/∂B), sample_bins [S or 1, M] when ``with_past``, the CSR maps
    and scale of the forward. Returns the gradient of each frame's tokens, one row per frame
    [S, L, e] in ``frames_dtype`` (g_n / T), and of the old coefficients [S, N, e] fp32 (an empty
    tensor without ``with_past``).
    """
    s, n, e = grad.shape
    grad_frames = torch.zeros(s, num_frames, e, device=grad.device, dtype=frames_dtype)
    grad_past = torch.zeros(s, n, e, device=grad.device, dtype=torch.float32) if with_past else grad.new_empty(0)
    if with_past and sample_bins.dim() == 1:
        sample_bins = sample_bins[None]
    bins_t = sample_bins.contiguous() if with_past else past_start
    # The forward's column blocks: each program's row of g is one contiguous read.
    block_e = min(_for_streams("block_e", s), next_power_of_2(e))
    _launch_rect_consolidate_backward((n, s, cdiv(e, block_e)),
        grad, bins_t, grad_frames, grad_past if with_past else grad,
        past_idx, past_start, frame_idx, frame_start, scale,
        e, 1.0 / tokens, grad.stride(0), grad.stride(1),
        bins_t.stride(0) if with_past and bins_t.shape[0] > 1 else 0,
        grad_frames.stride(0), grad_frames.stride(1),
        grad_past.stride(0) if with_past else 0, grad_past.stride(1) if with_past else 0,
        HAS_PAST=with_past, BLOCK_E=block_e, BLOCK_P=16,
        num_warps=_for_streams("num_warps", s),
    )
    return grad_frames, grad_past
