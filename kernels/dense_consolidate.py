"""Fused dense consolidation: pool each frame's tokens, fit them by G_framesᵀ, add the past map's
product, in one pass over the tokens.

B[s] = G_framesᵀ X[s] + mix[s] B_past[s], X the frames' mean tokens [L, e], G_frames [L, N] the
fit's frame rows (any dense fit: the Gaussian basis's), mix [N, N] the map from the old
coefficients (G_pastᵀ Ψ_u, ``gaussian_fit.sample_mix``). One program per (stream, tile of
BLOCK_E columns, tile of BLOCK_R basis rows): with all N rows in one tile (N ≤ ``MAX_ROWS``) every
token is read once, pooled in registers and met by the three-TF32 tensor-core product at once,
so neither the pooled frames nor a partial B go through memory; the past product accumulates into
the same tile before B is written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2

# Frames per step, tokens per load, columns and rows per program, warps, pipeline stages: the sweep
# of bench/tune_gaussian_consolidation.py on an H200 (one [frames, columns] load per token instead of the
# [frames, tokens, columns] tiles measured slower at every tile tried).
CONFIG = dict(block_l=32, block_t=16, block_e=64, max_rows=256, num_warps=8, num_stages=1)


@triton.jit
def _dense_consolidate_kernel(
    frames_ptr, g_ptr, mix_ptr, past_ptr, out_ptr, cast_ptr, N, L, E, TOKENS, inv_tokens,
    stride_fs, stride_fl, stride_ft, stride_fe, stride_gl, stride_gn, stride_ms, stride_mr, stride_mk,
    stride_ps, stride_pn, stride_pe, stride_os, stride_on,
    HAS_PAST: tl.constexpr, HAS_CAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
):
    tiles_e = tl.cdiv(E, BLOCK_E)
    pr = tl.program_id(0) // tiles_e
    pe = tl.program_id(0) % tiles_e
    s = tl.program_id(1).to(tl.int64)
    offs_r = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_r = offs_r < N
    mask_e = offs_e < E
    frames = frames_ptr + s * stride_fs
    acc = tl.zeros([BLOCK_R, BLOCK_E], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        pooled = tl.zeros([BLOCK_L, BLOCK_E], dtype=tl.float32)
        rows = frames + offs_l[:, None, None].to(tl.int64) * stride_fl + offs_e[None, None, :] * stride_fe
        for t0 in range(0, TOKENS, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            tile = tl.load(rows + offs_t[None, :, None] * stride_ft,
                           mask=mask_l[:, None, None] & (offs_t < TOKENS)[None, :, None] & mask_e[None, None, :],
                           other=0.0)
            pooled += tl.sum(tile.to(tl.float32), axis=1)
        g = tl.load(g_ptr + offs_l[None, :] * stride_gl + offs_r[:, None] * stride_gn,
                    mask=mask_l[None, :] & mask_r[:, None], other=0.0)
        acc = tl.dot(g, pooled * inv_tokens, acc, input_precision=PRECISION)
    if HAS_PAST:
        for k0 in range(0, N, BLOCK_L):
            offs_k = k0 + tl.arange(0, BLOCK_L)
            mask_k = offs_k < N
            mix = tl.load(mix_ptr + s * stride_ms + offs_r[:, None] * stride_mr + offs_k[None, :] * stride_mk,
                          mask=mask_r[:, None] & mask_k[None, :], other=0.0)
            past = tl.load(past_ptr + s * stride_ps + offs_k[:, None] * stride_pn + offs_e[None, :] * stride_pe,
                           mask=mask_k[:, None] & mask_e[None, :], other=0.0)
            acc = tl.dot(mix, past, acc, input_precision=PRECISION)
    out = s * stride_os + offs_r[:, None] * stride_on + offs_e[None, :]
    mask = mask_r[:, None] & mask_e[None, :]
    tl.store(out_ptr + out, acc, mask=mask)
    if HAS_CAST:  # the copy the K/V projection reads, in its weights' dtype
        tl.store(cast_ptr + out, acc.to(cast_ptr.dtype.element_ty), mask=mask)


_launch = CachedLaunch(_dense_consolidate_kernel)


@on_input_device
def dense_consolidate(frames: torch.Tensor, frame_g: torch.Tensor, mix: torch.Tensor | None,
                      past: torch.Tensor | None, precision: str,
                      cast_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(B float32, B in ``cast_dtype``) [S, N, e], B = G_framesᵀ pool(frames) (+ mix B_past).

    frames: [S, L, e] pooled or [S, L, *tokens, e] (any float dtype and strides, the token dims
    viewable as one); frame_g [L, N] float32, mix [S, N, N] and past [S, N, e] float32 (any strides),
    the last two both None for a first chunk; ``precision``: the dots' input precision
    (``products.precision``). The copy in ``cast_dtype`` is written by the same pass (the float32
    B itself when ``cast_dtype`` is float32)."""
    tokens = frames.flatten(2, -2) if frames.dim() > 3 else frames.unsqueeze(2)
    streams, length, count, width = tokens.shape
    n = frame_g.shape[1]
    out = torch.empty(streams, n, width, device=frames.device, dtype=torch.float32)
    cast = out if cast_dtype == torch.float32 else torch.empty_like(out, dtype=cast_dtype)
    block_r = min(CONFIG["max_rows"], max(16, next_power_of_2(n)))
    block_e = min(CONFIG["block_e"], max(16, next_power_of_2(width)))
    block_t = min(CONFIG["block_t"], next_power_of_2(count))
    has_past = past is not None
    mix_strides = (mix.stride(0), mix.stride(1), mix.stride(2)) if has_past else (0, 0, 0)
    past_strides = past.stride() if has_past else (0, 0, 0)
    _launch((cdiv(n, block_r) * cdiv(width, block_e), streams),
            tokens, frame_g, mix if has_past else out, past if has_past else out, out, cast, n, length, width, count,
            1.0 / count, *tokens.stride(), frame_g.stride(0), frame_g.stride(1), *mix_strides, *past_strides,
            out.stride(0), out.stride(1), HAS_PAST=has_past, HAS_CAST=cast is not out, PRECISION=precision,
            BLOCK_R=block_r, BLOCK_E=block_e, BLOCK_L=CONFIG["block_l"], BLOCK_T=block_t,
            num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
    return out, cast
