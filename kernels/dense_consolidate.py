"""Fused dense consolidation: pool each frame's tokens, fit them by G_framesᵀ, add the past map's
product, in one pass over the tokens.

B[s] = G_framesᵀ X[s] + mix[s] B_past[s], X the frames' mean tokens [L, e], G_frames [L, N] the
fit's frame rows (any dense fit: the Gaussian basis's), mix [N, N] the map from the old
coefficients (G_pastᵀ Ψ_u, ``gaussian_fit.sample_mix``). One program per (stream, tile of
BLOCK_E columns, tile of BLOCK_R basis rows): with all N rows in one tile (N ≤ ``max_rows``) every
token is read once, pooled and met by the three-TF32 tensor-core product at once, so neither the
pooled frames nor a partial B go through memory; the past product accumulates into the same tile
before B is written.

The pooling takes one of two forms (constexpr POOL_BY_DOT), whichever measured faster for the
tokens' dtype (``DOT_POOLING``):

- 16-bit tokens: as a product, pooled = P X with P [BLOCK_L frames, BLOCK_K token rows] the 0/1
  matrix of which frame a row belongs to (exact in the tokens' dtype, float32 accumulation). The
  token tile then feeds a dot, so Triton's pipeliner streams it through shared memory while the
  previous tile's products run, where a register reduction waits on each load;
- float32 tokens: summed in registers, a [frames, tokens, columns] tile at a time (the product
  form would need three TF32 passes over the tokens to stay exact).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2
from .products import output_tile

# Per pooling form: frames per step (and basis functions per step of the past product), columns
# and rows per program, warps, pipeline stages; the register form's tokens per load, the product
# form's bytes of tokens per pipeline stage. The sweeps of bench/tune_gaussian_consolidation.py
# on an H200.
CONFIG = {
    "register": dict(block_l=32, block_t=16, block_e=64, max_rows=256, num_warps=8, num_stages=1),
    "dot": dict(block_l=16, stage_bytes=65536, block_e=64, max_rows=256, num_warps=8, num_stages=3),
}
# Token dtypes pooled by a product (module-level so a test can send float32 tokens that way too).
DOT_POOLING = (torch.float16, torch.bfloat16)


@triton.jit
def _dense_consolidate_kernel(
    frames_ptr, g_ptr, mix_ptr, past_ptr, out_ptr, cast_ptr, N, L, E, TOKENS, inv_tokens,
    stride_fs, stride_fl, stride_ft, stride_fe, stride_gl, stride_gn, stride_ms, stride_mr, stride_mk,
    stride_ps, stride_pn, stride_pe, stride_os, stride_on,
    HAS_PAST: tl.constexpr, HAS_CAST: tl.constexpr, PRECISION: tl.constexpr, POOL_BY_DOT: tl.constexpr,
    POOL_PRECISION: tl.constexpr, POOL_FLOAT32: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_r, offs_e, mask_r, mask_e = output_tile(N, E, BLOCK_R, BLOCK_E)
    s = tl.program_id(1).to(tl.int64)
    offs_i = tl.arange(0, BLOCK_L)
    frames = frames_ptr + s * stride_fs + offs_e[None, :] * stride_fe
    acc = tl.zeros([BLOCK_R, BLOCK_E], dtype=tl.float32)
    if POOL_BY_DOT:
        # One flat loop over chunks of token rows (the pipeliner streams the innermost loop only):
        # a block of frames usually takes one chunk; a partial pooled sum times G is still exact.
        offs_k = tl.arange(0, BLOCK_K)
        block_rows = BLOCK_L * TOKENS
        chunks = tl.cdiv(block_rows, BLOCK_K)
        for c in range(0, tl.cdiv(L, BLOCK_L) * chunks):
            l0 = (c // chunks) * BLOCK_L
            k = (c % chunks) * BLOCK_K + offs_k  # row of the frame block: frame k // T, token k % T
            frame = k // TOKENS
            valid = (k < block_rows) & (l0 + frame < L)
            x = tl.load(frames + (l0 + frame)[:, None].to(tl.int64) * stride_fl + (k % TOKENS)[:, None] * stride_ft,
                        mask=valid[:, None] & mask_e[None, :], other=0.0)
            if POOL_FLOAT32:
                x = x.to(tl.float32)
            pool = (frame[None, :] == offs_i[:, None]).to(x.dtype)
            pooled = tl.dot(pool, x, input_precision=POOL_PRECISION)
            g = tl.load(g_ptr + (l0 + offs_i)[None, :] * stride_gl + offs_r[:, None] * stride_gn,
                        mask=(l0 + offs_i < L)[None, :] & mask_r[:, None], other=0.0)
            acc = tl.dot(g, pooled * inv_tokens, acc, input_precision=PRECISION)
    else:
        for l0 in range(0, L, BLOCK_L):
            offs_l = l0 + offs_i
            mask_l = offs_l < L
            pooled = tl.zeros([BLOCK_L, BLOCK_E], dtype=tl.float32)
            rows = frames + offs_l[:, None, None].to(tl.int64) * stride_fl
            for t0 in range(0, TOKENS, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                tile = tl.load(rows + offs_t[None, :, None] * stride_ft,
                               mask=mask_l[:, None, None] & (offs_t < TOKENS)[None, :, None]
                               & mask_e[None, None, :], other=0.0)
                pooled += tl.sum(tile.to(tl.float32), axis=1)
            g = tl.load(g_ptr + offs_l[None, :] * stride_gl + offs_r[:, None] * stride_gn,
                        mask=mask_l[None, :] & mask_r[:, None], other=0.0)
            acc = tl.dot(g, pooled * inv_tokens, acc, input_precision=PRECISION)
    if HAS_PAST:
        for k0 in range(0, N, BLOCK_L):
            offs_m = k0 + offs_i
            mask_m = offs_m < N
            mix = tl.load(mix_ptr + s * stride_ms + offs_r[:, None] * stride_mr + offs_m[None, :] * stride_mk,
                          mask=mask_r[:, None] & mask_m[None, :], other=0.0)
            past = tl.load(past_ptr + s * stride_ps + offs_m[:, None] * stride_pn + offs_e[None, :] * stride_pe,
                           mask=mask_m[:, None] & mask_e[None, :], other=0.0)
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
    by_dot = tokens.dtype in DOT_POOLING
    cfg = CONFIG["dot" if by_dot else "register"]
    block_r = min(cfg["max_rows"], max(16, next_power_of_2(n)))
    block_e = min(cfg["block_e"], max(16, next_power_of_2(width)))
    if by_dot:
        block_k = max(16, min(cfg["stage_bytes"] // (block_e * tokens.element_size()),
                              next_power_of_2(cfg["block_l"] * count)))
        block_t = 1
    else:
        block_k, block_t = 1, min(cfg["block_t"], next_power_of_2(count))
    has_past = past is not None
    mix_strides = (mix.stride(0), mix.stride(1), mix.stride(2)) if has_past else (0, 0, 0)
    past_strides = past.stride() if has_past else (0, 0, 0)
    _launch((cdiv(n, block_r) * cdiv(width, block_e), streams),
            tokens, frame_g, mix if has_past else out, past if has_past else out, out, cast, n, length, width, count,
            1.0 / count, *tokens.stride(), frame_g.stride(0), frame_g.stride(1), *mix_strides, *past_strides,
            out.stride(0), out.stride(1), HAS_PAST=has_past, HAS_CAST=cast is not out, PRECISION=precision,
            POOL_BY_DOT=by_dot, POOL_PRECISION=precision if tokens.dtype == torch.float32 else "ieee",
            # The CPU interpreter's bfloat16 dot reads the raw 16-bit patterns as integers: upcast
            # there (exact), where the GPU multiplies the tokens as they are.
            POOL_FLOAT32=tokens.dtype == torch.bfloat16 and tokens.device.type != "cuda",
            BLOCK_R=block_r, BLOCK_E=block_e, BLOCK_L=cfg["block_l"],
            BLOCK_T=block_t, BLOCK_K=block_k, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out, cast
