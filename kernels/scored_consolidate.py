"""The rectangular step in two passes, the key and value projections folded into the queries.

SPEC section 8's algebra (``kernels/factored_attention.py``): with K = B W_kᵀ + b_k and V = B W_vᵀ +
b_v, a slot's score is (u · B_n + c) / √d with u = W_k,hᵀ q_h and c = q_h · b_k,h, and the context
is W_v,h Σ_n r_n B_n + (Σ_n r_n) b_v,h. So the scores of a tile of new coefficient rows can be
taken right where those rows are made, and K and V never exist:

- pass 1 (``_scored_consolidate_kernel``, one program per tile of BLOCK_N bins and stream): each
  bin's row as the fused consolidation makes it (``consolidate.bin_row``: frames pooled over
  their tokens, the sampled old rows, the shrunk scale), written once as the new state; then the
  tile's raw scores u · B_n for every folded query row h·Q + q, [S, H·Q, N] float32, from the rows
  the program has just written (still in L2);
- pass 2 (``_folded_read_kernel``, one program per stream, head and block of 32 queries): the
  softmax over the bins (slot log-weights, the paper preset's null slot), the sticky mass of the
  block, Σ_n r_n B_n a slice of e at a time and through W_v,h into the head's context (B read in
  the projections' type when that is a half type: pass 1 writes that copy beside the float32 rows).

What crosses memory besides the tokens is the old rows the samples read, the new rows (written,
then read back by pass 2) and the [S, H·Q, N] scores. Dots: float32 inputs take ``PRECISION``
(three TF32 products on a GPU: float32 accuracy); with half-precision projections both operands
are rounded to that type for the tensor cores (HALF_DOTS), as the projections themselves would.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._online_softmax import running_max_sum, softmax_start, store_group_mass
from . import products
from .consolidate import bin_row
from .factored_attention import folded_queries


@triton.jit
def _dot(a, b, acc, HALF_DOTS: tl.constexpr, DOT_TYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b: on DOT_TYPE tensor cores with HALF_DOTS, else float32 dots of PRECISION."""
    if HALF_DOTS:
        return tl.dot(a.to(DOT_TYPE), b.to(DOT_TYPE), acc)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)


@triton.jit
def _scored_consolidate_kernel(
    frames_ptr, past_ptr, bins_ptr, coef_ptr, cast_ptr, u_ptr, scores_ptr,
    past_idx_ptr, past_start_ptr, frame_idx_ptr, frame_start_ptr, scale_ptr,
    N, E, ROWS, Q_LEN, TOKENS, inv_tokens,
    stride_fs, stride_fl, stride_ft, stride_fe, stride_ps, stride_pn, stride_bs,
    stride_cs, stride_cn, stride_us, stride_uh, stride_uq, stride_ss, stride_sr,
    HAS_PAST: tl.constexpr, FRAME_ROWS: tl.constexpr, WRITE_CAST: tl.constexpr, HALF_DOTS: tl.constexpr,
    DOT_TYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    s = tl.program_id(1).to(tl.int64)
    coef_base = coef_ptr + s * stride_cs
    for n in range(n0, tl.minimum(n0 + BLOCK_N, N)):
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < E
            row = bin_row(frames_ptr, past_ptr, bins_ptr, past_idx_ptr, past_start_ptr, frame_idx_ptr,
                          frame_start_ptr, scale_ptr, n, s, offs_e, mask_e, TOKENS, inv_tokens, stride_fs, stride_fl,
                          stride_ft, stride_fe, stride_ps, stride_pn, stride_bs, HAS_PAST, FRAME_ROWS, BLOCK_E,
                          BLOCK_T, BLOCK_P)
            tl.store(coef_base + n * stride_cn + offs_e, row, mask=mask_e)
            if WRITE_CAST:
                # Pass 2 reads the rows in the half-precision projections' type: half the bytes.
                tl.store(cast_ptr + s * stride_cs + n * stride_cn + offs_e,
                         row.to(cast_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask_e)
    # The rows this program wrote are read back by its other threads: make the stores visible.
    tl.debug_barrier()

    bins = n0 + tl.arange(0, BLOCK_N)
    mask_n = bins < N
    offs_k = tl.arange(0, BLOCK_K)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask_r = rows < ROWS
        row_offs = s * stride_us + (rows // Q_LEN).to(tl.int64) * stride_uh + (rows % Q_LEN) * stride_uq
        acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, E, BLOCK_K):
            cols = k0 + offs_k
            mask_k = cols < E
            u = tl.load(u_ptr + row_offs[:, None] + cols[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(coef_base + bins[None, :] * stride_cn + cols[:, None], mask=mask_n[None, :] & mask_k[:, None],
                        other=0.0)
            acc = _dot(u, b, acc, HALF_DOTS, DOT_TYPE, PRECISION)
        tl.store(scores_ptr + s * stride_ss + rows[:, None].to(tl.int64) * stride_sr + bins[None, :], acc,
                 mask=mask_r[:, None] & mask_n[None, :])


@triton.jit
def _scaled_scores(scores_base, kb, logw_ptr, offs_q, mask_q, slots, mask_n, stride_sr, sm_scale,
                HAS_LOGW: tl.constexpr):
    """(u · B_n + c) / √d (+ log w_n) of one tile of slots for a block of queries, -inf outside."""
    raw = tl.load(scores_base + offs_q[:, None] * stride_sr + slots[None, :], mask=mask_q[:, None] & mask_n[None, :],
                  other=0.0)
    scores = (raw + kb[:, None]) * sm_scale
    if HAS_LOGW:
        scores += tl.load(logw_ptr + slots, mask=mask_n, other=0.0)[None, :]
    return tl.where(mask_n[None, :], scores, float("-inf"))


@triton.jit
def _folded_read_kernel(
    scores_ptr, kb_ptr, logw_ptr, coef_ptr, wv_ptr, bv_ptr, ctx_ptr, mass_ptr,
    Q_LEN, N, E, HEAD_DIM, null_logw, sm_scale,
    stride_ss, stride_sr, stride_kbs, stride_cs, stride_cn, stride_wd, stride_we, stride_xs, stride_xq,
    stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr, HAS_KEY_BIAS: tl.constexpr, HAS_VALUE_BIAS: tl.constexpr,
    HALF_DOTS: tl.constexpr, DOT_TYPE: tl.constexpr, PRECISION: tl.constexpr,
    GROUP: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per (stream, head, GROUPS mass groups of GROUP queries): each program reads its
    # stream's coefficients once, so more queries per program read them fewer times. The scores
    # are read from pass 1's output once per slice of e (from L2) rather than held: N may be large.
    BLOCK_Q: tl.constexpr = GROUP * GROUPS
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    qb = tl.program_id(2)
    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q_LEN
    scores_base = scores_ptr + s * stride_ss + (h * Q_LEN).to(tl.int64) * stride_sr
    offs_n = tl.arange(0, BLOCK_N)
    if HAS_KEY_BIAS:
        kb = tl.load(kb_ptr + s * stride_kbs + h * Q_LEN + offs_q, mask=mask_q, other=0.0)
    else:
        kb = tl.zeros([BLOCK_Q], dtype=tl.float32)
    m_i, l_i = softmax_start(null_logw, BLOCK_Q, HAS_NULL)
    for n0 in range(0, N, BLOCK_N):
        slots = n0 + offs_n
        mask_n = slots < N
        scores = _scaled_scores(scores_base, kb, logw_ptr, offs_q, mask_q, slots, mask_n, stride_sr, sm_scale, HAS_LOGW)
        m_i, l_i = running_max_sum(scores, mask_n, m_i, l_i)
    inv_l = 1.0 / l_i

    # The block's mass (per group of GROUP queries of the head) and Σ_n r_n, which the value bias is
    # weighted by.
    total = tl.zeros([BLOCK_Q], dtype=tl.float32)
    blocks = tl.cdiv(Q_LEN, GROUP)
    head_mass = mass_ptr + s * stride_ms + (h * blocks) * stride_mg
    for n0 in range(0, N, BLOCK_N):
        slots = n0 + offs_n
        mask_n = slots < N
        scores = _scaled_scores(scores_base, kb, logw_ptr, offs_q, mask_q, slots, mask_n, stride_sr, sm_scale, HAS_LOGW)
        p = tl.where(mask_q[:, None] & mask_n[None, :], tl.exp(scores - m_i[:, None]) * inv_l[:, None], 0.0)
        total += tl.sum(p, axis=1)
        store_group_mass(head_mass, p, qb, slots, mask_n, blocks, stride_mg, BLOCK_Q, BLOCK_N, GROUP)

    # context_h = W_v,h Σ_n r_n B_n (+ Σ_n r_n b_v,h), a slice of e at a time.
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    coef_base = coef_ptr + s * stride_cs
    ctx = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        cols = e0 + tl.arange(0, BLOCK_E)
        mask_e = cols < E
        mixed = tl.zeros([BLOCK_Q, BLOCK_E], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            slots = n0 + offs_n
            mask_n = slots < N
            scores = _scaled_scores(scores_base, kb, logw_ptr, offs_q, mask_q, slots, mask_n, stride_sr, sm_scale,
                                 HAS_LOGW)
            p = tl.where(mask_q[:, None] & mask_n[None, :], tl.exp(scores - m_i[:, None]) * inv_l[:, None], 0.0)
            b = tl.load(coef_base + slots[:, None] * stride_cn + cols[None, :], mask=mask_n[:, None] & mask_e[None, :],
                        other=0.0)
            mixed = _dot(p, b, mixed, HALF_DOTS, DOT_TYPE, PRECISION)
        w = tl.load(wv_ptr + (h * HEAD_DIM + offs_d)[None, :] * stride_wd + cols[:, None] * stride_we,
                    mask=mask_d[None, :] & mask_e[:, None], other=0.0)
        ctx = _dot(mixed, w, ctx, HALF_DOTS, DOT_TYPE, PRECISION)
    if HAS_VALUE_BIAS:
        ctx += total[:, None] * tl.load(bv_ptr + h * HEAD_DIM + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(ctx_ptr + s * stride_xs + offs_q[:, None] * stride_xq + (h * HEAD_DIM + offs_d)[None, :],
             ctx.to(ctx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])


_launch_scored = CachedLaunch(_scored_consolidate_kernel)
_launch_read = CachedLaunch(_folded_read_kernel)

# Tiles, not yet tuned on a GPU: pass 1's bins per program, slice of e per row, rows of tokens per
# load, folded query rows and slice of e per score product, warps; pass 2's groups of 16 queries
# per program (a power of 2), slots per tile, slice of e per mix, warps.
CONFIG = {"block_n": 16, "block_e": 256, "block_t": 32, "block_r": 64, "block_k": 64, "warps": 4,
          "read_groups": 2, "read_block_n": 64, "read_block_e": 64, "read_warps": 4}
QUERY_GROUP = 16
_HALF = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@on_input_device
def scored_step(frames: torch.Tensor, past: torch.Tensor | None, sample_bins: torch.Tensor | None,
                past_idx: torch.Tensor, past_start: torch.Tensor, frame_idx: torch.Tensor, frame_start: torch.Tensor,
                scale: torch.Tensor, frames_in_order: bool, max_per_bin: int, query: torch.Tensor,
                w_key: torch.Tensor, b_key: torch.Tensor | None, w_value: torch.Tensor, b_value: torch.Tensor | None,
                num_heads: int, slot_log_weight: torch.Tensor | None, null_log_weight: float | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the two passes; inputs are checked by ``infvideo.ops``.

    frames [S, L, T, e] and the consolidation's maps as ``consolidate.rect_consolidate`` takes them
    (past [S, N, e] float32 with sample_bins [S or 1, M], or None); query [S, Q, D]; w_key /
    w_value [D, e] with biases [D] or None (one dtype: float32, or a half type for tensor-core
    dots); slot_log_weight [N] float32 or None; null_log_weight: the null slot's, or None. Returns
    (context [S, Q, D] in the query's dtype, new coefficients [S, N, e] float32, mass
    [S, H·⌈Q/16⌉, N] float32: each head's attention summed over blocks of 16 queries, as
    ``slot_attention`` gives it).
    """
    s, _, tokens, e = frames.shape
    q_len, model = query.shape[1], query.shape[2]
    n = scale.numel()
    d = model // num_heads
    rows = num_heads * q_len
    device = frames.device
    precision = products.precision(device)
    # Half-precision weights: the tensor cores in that type (the CPU interpreter's bf16 dot is wrong:
    # float32 there).
    half = w_key.dtype in _HALF and device.type == "cuda"
    folded, u_strides = folded_queries(query, w_key, num_heads, precision)
    key_bias = None
    if b_key is not None and null_log_weight is not None:
        # c = q_h · b_k,h shifts a row's scores against the null slot's fixed one (without a null
        # slot the softmax ignores it).
        key_bias = (query.to(torch.float32).reshape(s, q_len, num_heads, d) * b_key.to(torch.float32).view(num_heads, d)
                    ).sum(-1).transpose(1, 2).reshape(s, rows).contiguous()

    coef = torch.empty(s, n, e, device=device, dtype=torch.float32)
    # With half-precision projections pass 2 mixes the rows in their type (as K/V would be).
    cast = torch.empty_like(coef, dtype=w_value.dtype) if w_value.dtype in _HALF else coef
    scores = torch.empty(s, rows, n, device=device, dtype=torch.float32)
    past_t = past if past is not None else scale
    bins_t = sample_bins if sample_bins is not None else past_start
    frame_rows = frames_in_order and frames.stride(1) == tokens * frames.stride(2)
    block_e = min(CONFIG["block_e"], next_power_of_2(e))
    block_t = CONFIG["block_t"] if frame_rows else min(32, next_power_of_2(tokens))
    dot_type = _HALF[w_key.dtype] if half else tl.float32
    _launch_scored((cdiv(n, CONFIG["block_n"]), s),
        frames, past_t, bins_t, coef, cast, folded, scores, past_idx, past_start, frame_idx, frame_start, scale,
        n, e, rows, q_len, tokens, 1.0 / tokens,
        frames.stride(0), frames.stride(1), frames.stride(2), frames.stride(3),
        past_t.stride(0) if past is not None else 0, past_t.stride(1) if past is not None else 0,
        sample_bins.stride(0) if sample_bins is not None and sample_bins.shape[0] > 1 else 0,
        coef.stride(0), coef.stride(1), *u_strides, scores.stride(0), scores.stride(1),
        HAS_PAST=past is not None, FRAME_ROWS=frame_rows, WRITE_CAST=cast is not coef, HALF_DOTS=half,
        DOT_TYPE=dot_type, PRECISION=precision,
        BLOCK_N=CONFIG["block_n"], BLOCK_E=block_e, BLOCK_T=block_t,
        BLOCK_P=min(64, next_power_of_2(max(1, max_per_bin))), BLOCK_R=CONFIG["block_r"],
        BLOCK_K=min(CONFIG["block_k"], max(16, next_power_of_2(e))), num_warps=CONFIG["warps"])

    blocks = cdiv(q_len, QUERY_GROUP)
    groups = min(CONFIG["read_groups"], next_power_of_2(blocks))
    context = torch.empty(s, q_len, model, device=device, dtype=query.dtype)
    mass = torch.empty(s, num_heads * blocks, n, device=device, dtype=torch.float32)
    _launch_read((s, num_heads, cdiv(blocks, groups)),
        scores, key_bias if key_bias is not None else scores,
        slot_log_weight if slot_log_weight is not None else scores,
        cast, w_value, b_value if b_value is not None else w_value, context, mass,
        q_len, n, e, d, 0.0 if null_log_weight is None else float(null_log_weight), 1.0 / math.sqrt(d),
        scores.stride(0), scores.stride(1), key_bias.stride(0) if key_bias is not None else 0,
        coef.stride(0), coef.stride(1), w_value.stride(0), w_value.stride(1), context.stride(0), context.stride(1),
        mass.stride(0), mass.stride(1),
        HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None, HAS_KEY_BIAS=key_bias is not None,
        HAS_VALUE_BIAS=b_value is not None, HALF_DOTS=half, DOT_TYPE=dot_type, PRECISION=precision,
        GROUP=QUERY_GROUP, GROUPS=groups, BLOCK_N=max(16, min(CONFIG["read_block_n"], next_power_of_2(n))),
        BLOCK_E=max(16, min(CONFIG["read_block_e"], next_power_of_2(e))), BLOCK_D=max(16, next_power_of_2(d)),
        num_warps=CONFIG["read_warps"])
    return context, coef, mass
