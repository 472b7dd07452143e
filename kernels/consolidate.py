"""Fused rectangular consolidation: pool frame tokens, read the sampled old rows, shrunk segmented sum.

One program per (new bin n, stream s, block of BLOCK_E columns). Positions are sorted in time and
bins are monotone in time, so the frames and past samples that land in bin n are a CSR range:
the program reads exactly its own inputs, writes its output once (no atomics, deterministic), and
no [M + L, e] matrix or pooled copy of the frames ever reaches memory.

Past samples come from one of three sources (constexpr SOURCE):
  0  none (a stream's first chunk);
  1  given old-bin indices [S or 1, M] (uniform, multinomial, upstream sampling), -1 reads zeros;
  2  the quantile inverse-CDF of the sticky masses [S, G, N], computed in the prologue: every
     program rebuilds the stream's CDF (N ≤ a few thousand floats, cheaper than a launch) in
     float64 so the sample bins agree with the reference's float64 search.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rect_consolidate_kernel(
    frames_ptr, past_ptr, bins_ptr, mass_ptr, out_ptr,
    past_idx_ptr, past_start_ptr, frame_idx_ptr, frame_start_ptr, scale_ptr,
    N, E, TOKENS, M, G, inv_tokens,
    stride_fs, stride_fl, stride_ft, stride_fe,
    stride_ps, stride_pn, stride_bs, stride_ms, stride_mg, stride_os, stride_on,
    SOURCE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    offs_e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    acc = tl.zeros([BLOCK_E], dtype=tl.float32)

    # Frames of this bin, each pooled over its tokens on the fly.
    f_lo = tl.load(frame_start_ptr + n)
    f_hi = tl.load(frame_start_ptr + n + 1)
    offs_t = tl.arange(0, BLOCK_T)
    for k in range(f_lo, f_hi):
        j = tl.load(frame_idx_ptr + k).to(tl.int64)
        base = frames_ptr + s * stride_fs + j * stride_fl + offs_e[None, :] * stride_fe
        part = tl.zeros([BLOCK_E], dtype=tl.float32)
        for t0 in range(0, TOKENS, BLOCK_T):
            rows = t0 + offs_t
            tile = tl.load(base + rows[:, None] * stride_ft, mask=(rows[:, None] < TOKENS) & mask_e[None, :],
                           other=0.0)
            part += tl.sum(tile.to(tl.float32), axis=0)
        acc += part * inv_tokens

    if SOURCE != 0:
        p_lo = tl.load(past_start_ptr + n)
        p_hi = tl.load(past_start_ptr + n + 1)
        if SOURCE == 2:
            offs_n = tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            weight = tl.zeros([BLOCK_N], dtype=tl.float64)
            for g in range(0, G):
                weight += tl.load(mass_ptr + s * stride_ms + g * stride_mg + offs_n, mask=mask_n,
                                  other=0.0).to(tl.float64)
            cdf = tl.cumsum(weight, axis=0)
            total = tl.max(tl.where(mask_n, cdf, 0.0), axis=0)
        for k in range(p_lo, p_hi):
            i = tl.load(past_idx_ptr + k)
            if SOURCE == 2:
                level = (i.to(tl.float64) + 0.5) / M * total
                src = tl.minimum(tl.sum(((cdf <= level) & mask_n).to(tl.int64), axis=0), N - 1)
            else:
                src = tl.load(bins_ptr + s * stride_bs + i)
            # A sample in no bin (-1) reads zeros; the mask is built as a block, not a scalar.
            read = mask_e & ((offs_e * 0 + src) >= 0)
            row = tl.load(past_ptr + s * stride_ps + tl.maximum(src, 0).to(tl.int64) * stride_pn + offs_e,
                          mask=read, other=0.0)
            acc += row.to(tl.float32)

    scale = tl.load(scale_ptr + n)
    tl.store(out_ptr + s * stride_os + n * stride_on + offs_e, acc * scale, mask=mask_e)


def rect_consolidate(frames: torch.Tensor, past: torch.Tensor | None, sample_bins: torch.Tensor | None,
                     mass: torch.Tensor | None, past_idx: torch.Tensor, past_start: torch.Tensor,
                     frame_idx: torch.Tensor, frame_start: torch.Tensor, scale: torch.Tensor,
                     num_samples: int) -> torch.Tensor:
    """Launch the fused consolidation; inputs are checked by ``infvideo.ops``.

    frames [S, L, T, e] (T = 1 for pooled frames; any strides), past [S, N, e] (last stride 1),
    sample_bins [S or 1, M] int64 or mass [S, G, N] (at most one), CSR maps int32, scale [N] fp32.
    Returns the new coefficients [S, N, e] in float32.
    """
    s, _, tokens, e = frames.shape
    n = scale.numel()
    out = torch.empty(s, n, e, device=frames.device, dtype=torch.float32)
    source = 0 if past is None else (2 if mass is not None else 1)
    dummy = scale
    past_t = past if past is not None else dummy
    bins_t = sample_bins if sample_bins is not None else past_start
    mass_t = mass if mass is not None else dummy
    # 128 columns × 32 tokens per tile: 32 values per thread at 4 warps, wide enough for
    # 16-byte loads along e, and ~L·e/128 programs to cover the GPU even for one stream.
    block_e = min(128, triton.next_power_of_2(e))
    block_t = min(32, triton.next_power_of_2(tokens))
    grid = (n, s, triton.cdiv(e, block_e))
    _rect_consolidate_kernel[grid](
        frames, past_t, bins_t, mass_t, out,
        past_idx, past_start, frame_idx, frame_start, scale,
        n, e, tokens, num_samples, mass.shape[1] if mass is not None else 0, 1.0 / tokens,
        frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3),
        past_t.stride(0) if past is not None else 0, past_t.stride(1) if past is not None else 0,
        sample_bins.stride(0) if sample_bins is not None and sample_bins.shape[0] > 1 else 0,
        mass_t.stride(0) if mass is not None else 0, mass_t.stride(1) if mass is not None else 0,
        out.stride(0), out.stride(1),
        SOURCE=source, BLOCK_E=block_e, BLOCK_T=block_t, BLOCK_N=triton.next_power_of_2(n),
        num_warps=4,
    )
    return out
