"""Slot attention with the key and value projections folded into the queries (SPEC section 8's algebra).

Per stream, head h and query q (rows h·Q + q of the H·Q folded queries):

    u = W_k,hᵀ q_h                              [e]   (products.head_products: one batched product)
    r = softmax_n(u · B_n / √d + log w_n)       [N]   (_folded_softmax_kernel)
    m = Σ_n r_n B_n                             [e]   (_mix_kernel)
    context_h = W_v,h m + b_v,h                 [d]   (products.head_products again)

K = B W_kᵀ and V = B W_vᵀ are never formed: for N slots large against H·Q the two head products
and the two products with B need fewer multiply-adds than the two projections (the op layer,
``infvideo.ops.factored_attention.applies``, decides). The key bias drops out: it shifts every
score of a row alike, and there is no null slot.

Every product runs in float32 (inputs of other float types are converted as they are loaded), on
a GPU with TF32 tensor cores as three TF32 products (``products.split_dot``): each product's
register operand is split in registers, its shared-memory operand is read as it is (a TF32
product truncates it to its high part) with its low part from memory (the query's and W_v's,
built per call; the weights', written by the softmax kernel). Each product is laid out so that
its shared-memory operand is read along the inner dimension, which float32 tensor-core products
require. The weights r [S, H·Q, N] pass through memory between the softmax and the mix (a quarter
of B's size for H·Q = 384, N = 256, e = 768): holding them in the softmax kernel for the mix
asked for more shared memory than an H200 has, or spilled (ptxas, sm_90).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from . import products
from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._online_softmax import store_group_mass
from .products import (head_products, output_tile, product_blocks, split_dot, split_precision, takes_split_products,
                       tf32_operand, tf32_remainder, tf32_truncated)

# The mass is summed over groups of this many consecutive folded rows h·Q + q (the op's output
# [S, ⌈H·Q/16⌉, N]); the softmax kernel's row blocks are whole groups.
QUERY_GROUP = 16


@triton.jit
def _folded_scores(u_base, c_base, logw_ptr, row_offs, mask_r, slots, mask_n, WIDTH, stride_cn, sm_scale,
                   HAS_LOGW: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr,
                   SPLIT_PRECISION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_E: tl.constexpr, STAGES: tl.constexpr):
    """(u · B_n / √d + log w_n)ᵀ of one block of rows (at ``row_offs`` from u_base) and one tile
    of slots, [BLOCK_N, BLOCK_R]: transposed, so that B's tile, the larger, is the product's
    register operand (SPLIT: split there) and every dot of the split product takes one layout
    (a [rows, slots] product on 8 warps put its partial and its running sums in two, and
    converted between them on every step)."""
    acc = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.float32)
    for e0 in tl.range(0, WIDTH, BLOCK_E, num_stages=STAGES):
        cols = e0 + tl.arange(0, BLOCK_E)
        mask_e = cols < WIDTH
        u = tl.load(u_base + row_offs[:, None] + cols[None, :], mask=mask_r[:, None] & mask_e[None, :], other=0.0)
        c = tl.load(c_base + slots[:, None] * stride_cn + cols[None, :], mask=mask_n[:, None] & mask_e[None, :],
                    other=0.0)
        if SPLIT:
            c_high = tf32_truncated(c)
            acc += split_dot(c_high, c - c_high, tl.trans(tf32_operand(u, SPLIT_PRECISION)),
                             tl.trans(u - tf32_truncated(u)), SPLIT_PRECISION)
        else:
            acc = tl.dot(c, tl.trans(u), acc, input_precision=PRECISION)
    scores = acc * sm_scale
    if HAS_LOGW:
        scores += tl.load(logw_ptr + slots, mask=mask_n, other=0.0)[:, None]
    return tl.where(mask_n[:, None], scores, float("-inf"))


@triton.jit
def _store_weights(r_rows, r_low_rows, p, slots, mask_r, mask_n, SPLIT: tl.constexpr):
    """The weights pᵀ [slots, rows] of a block of rows (``r_rows`` [1, rows]) and a tile of slots;
    with SPLIT also their low parts p − tf32_truncated(p), which the mix's products read."""
    mask = mask_n[:, None] & mask_r[None, :]
    tl.store(r_rows + slots[:, None], p, mask=mask)
    if SPLIT:
        tl.store(r_low_rows + slots[:, None], p - tf32_truncated(p), mask=mask)


@triton.jit
def _folded_softmax_kernel(
    u_ptr, c_ptr, logw_ptr, r_ptr, r_low_ptr, mass_ptr,
    ROWS, Q_LEN, N, WIDTH, GROUPS_TOTAL, sm_scale,
    stride_us, stride_uh, stride_uq, stride_cs, stride_cn, stride_rs, stride_rr, stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, ONE_TILE: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr,
    SPLIT_PRECISION: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr, STAGES: tl.constexpr,
):
    # One program per (block of BLOCK_R folded rows h·Q + q, stream) writes those rows' weights r
    # [S, rows, N] (strides rs, rr; with SPLIT their low parts too, alike) and their mass. Row
    # h·Q + q of stream s lies at s·stride_us + h·stride_uh + q·stride_uq (u is head-major across
    # the streams, so that its product and the context's run over all S·Q rows of a head at once).
    # Scores and weights are held transposed, [slots, rows] (_folded_scores). ONE_TILE (every
    # slot in one tile): one pass, the scores held in registers. Otherwise pass 1 finds each
    # row's maximum and normaliser over the slot tiles and pass 2 recomputes the scores.
    rb = tl.program_id(0)
    s = tl.program_id(1).to(tl.int64)
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < ROWS
    row_offs = (rows // Q_LEN).to(tl.int64) * stride_uh + (rows % Q_LEN) * stride_uq
    u_base = u_ptr + s * stride_us
    c_base = c_ptr + s * stride_cs
    r_offs = s * stride_rs + rows[None, :].to(tl.int64) * stride_rr
    offs_n = tl.arange(0, BLOCK_N)
    # Each group of GROUP consecutive rows of the block adds its weights into one mass row.
    groups = rb * (BLOCK_R // GROUP) + tl.arange(0, BLOCK_R // GROUP)
    mass_base = mass_ptr + s * stride_ms
    if ONE_TILE:
        mask_n = offs_n < N
        scores = _folded_scores(u_base, c_base, logw_ptr, row_offs, mask_r, offs_n, mask_n, WIDTH, stride_cn,
                                sm_scale, HAS_LOGW, PRECISION, SPLIT, SPLIT_PRECISION, BLOCK_R, BLOCK_N, BLOCK_E,
                                STAGES)
        m_i = tl.max(scores, axis=0)
        p = tl.exp(scores - m_i[None, :])
        inv_l = 1.0 / tl.sum(p, axis=0)
        p = tl.where(mask_n[:, None] & mask_r[None, :], p * inv_l[None, :], 0.0)
        store_group_mass(mass_base, tl.trans(p), groups, groups < GROUPS_TOTAL, offs_n, mask_n, stride_mg,
                         BLOCK_R // GROUP, GROUP, BLOCK_N)
        _store_weights(r_ptr + r_offs, r_low_ptr + r_offs, p, offs_n, mask_r, mask_n, SPLIT)
    else:
        m_i = tl.zeros([BLOCK_R], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            slots = n0 + offs_n
            scores = _folded_scores(u_base, c_base, logw_ptr, row_offs, mask_r, slots, slots < N, WIDTH, stride_cn,
                                    sm_scale, HAS_LOGW, PRECISION, SPLIT, SPLIT_PRECISION, BLOCK_R, BLOCK_N, BLOCK_E,
                                    STAGES)
            m_new = tl.maximum(m_i, tl.max(scores, axis=0))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(scores - m_new[None, :]), axis=0)
            m_i = m_new
        inv_l = 1.0 / l_i
        for n0 in range(0, N, BLOCK_N):
            slots = n0 + offs_n
            mask_n = slots < N
            scores = _folded_scores(u_base, c_base, logw_ptr, row_offs, mask_r, slots, mask_n, WIDTH, stride_cn,
                                    sm_scale, HAS_LOGW, PRECISION, SPLIT, SPLIT_PRECISION, BLOCK_R, BLOCK_N, BLOCK_E,
                                    STAGES)
            p = tl.exp(scores - m_i[None, :]) * inv_l[None, :]
            p = tl.where(mask_n[:, None] & mask_r[None, :], p, 0.0)
            store_group_mass(mass_base, tl.trans(p), groups, groups < GROUPS_TOTAL, slots, mask_n, stride_mg,
                             BLOCK_R // GROUP, GROUP, BLOCK_N)
            _store_weights(r_ptr + r_offs, r_low_ptr + r_offs, p, slots, mask_r, mask_n, SPLIT)


_launch_softmax = CachedLaunch(_folded_softmax_kernel)


@triton.jit
def _mix_kernel(
    r_ptr, r_low_ptr, c_ptr, out_ptr, ROWS, Q_LEN, N, WIDTH,
    stride_rs, stride_rr, stride_cs, stride_cn, stride_us, stride_uh, stride_uq,
    PRECISION: tl.constexpr, SPLIT: tl.constexpr, SPLIT_PRECISION: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Σ_n r_n B_n of BLOCK_R folded rows and BLOCK_E columns of one stream (program_id(1)), written
    # in u's layout for the context's head product. Computed transposed, [BLOCK_E, BLOCK_R] =
    # Bᵀ rᵀ: a float32 tensor-core product reads its shared-memory operand along the inner
    # dimension, which r's rows are (slots contiguous) and B's columns are not; B is split in
    # registers instead, and r's low parts come from memory (SPLIT).
    cols, rows, mask_e, mask_r = output_tile(WIDTH, ROWS, BLOCK_E, BLOCK_R)
    s = tl.program_id(1).to(tl.int64)
    r_offs = s * stride_rs + rows[None, :].to(tl.int64) * stride_rr
    c_cols = c_ptr + s * stride_cs + cols[:, None]
    acc = tl.zeros([BLOCK_E, BLOCK_R], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        slots = n0 + tl.arange(0, BLOCK_N)
        mask_n = slots < N
        c = tl.load(c_cols + slots[None, :] * stride_cn, mask=mask_e[:, None] & mask_n[None, :], other=0.0)
        mask_w = mask_n[:, None] & mask_r[None, :]
        r = tl.load(r_ptr + r_offs + slots[:, None], mask=mask_w, other=0.0)
        if SPLIT:
            c_high = tf32_truncated(c)
            r_low = tl.load(r_low_ptr + r_offs + slots[:, None], mask=mask_w, other=0.0)
            acc += split_dot(c_high, c - c_high, tf32_operand(r, SPLIT_PRECISION), r_low, SPLIT_PRECISION)
        else:
            acc = tl.dot(c, r, acc, input_precision=PRECISION)
    row_offs = (rows // Q_LEN).to(tl.int64) * stride_uh + (rows % Q_LEN) * stride_uq
    tl.store(out_ptr + s * stride_us + row_offs[:, None] + cols[None, :], tl.trans(acc),
             mask=mask_r[:, None] & mask_e[None, :])


_launch_mix = CachedLaunch(_mix_kernel)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def fills_device(streams: int, rows: int, device: torch.device) -> bool:
    """Whether the softmax kernel's programs for ``streams`` streams of ``rows`` folded query rows
    (H·Q) cover the GPU's multiprocessors at least once: with fewer, the folded attention leaves
    most of the GPU idle and loses to projecting K and V (bench/README.md, "Issue 22, seventh
    session"). Always true off CUDA."""
    if device.type != "cuda":
        return True
    index = device.index if device.index is not None else torch.cuda.current_device()
    return streams * cdiv(rows, CONFIG["rows"]) >= _multiprocessors(index)


def _with_low_part(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as contiguous float32, its low part ``products.tf32_remainder``), for a split product that
    reads x's tiles as their own high parts."""
    x = x.to(torch.float32).contiguous()
    return x, tf32_remainder(x)


# The softmax kernel's tiles: rows of folded queries per program (whole mass groups), the slice
# of e its dots take per step, warps and pipeline stages. A tile holds at most slot_tile slots
# (its pipelined B slices fill shared memory) and keeps the [rows, slots] scores within
# scores_per_warp float32 values a warp (in registers); every slot in one tile takes one pass,
# more slots two. mix_tiles: the weights' product with B (columns of e, rows, slots per step,
# warps, stages). split: three TF32 products (products.split_dot) of operands split in registers
# or read with their low parts where the GPU has TF32 tensor cores, else Triton's dots at
# products.precision. The head products' tiles (products.head_products): the queries through W_k
# ([S·Q, d] by [d, e] per head) and the context through W_v ([S·Q, e] by [e, d]).
# bench/tune_factored_attention.py sweeps them all.
CONFIG = {"rows": 64, "block_e": 32, "warps": 8, "stages": 3, "slot_tile": 256, "scores_per_warp": 2048,
          "split": True, "mix_tiles": (128, 64, 32, 4, 3), "query_tiles": (128, 64, 32, 4, 3),
          "context_tiles": (64, 64, 32, 4, 3)}


@on_input_device
def factored_slot_attention(query: torch.Tensor, coef: torch.Tensor, w_key: torch.Tensor, w_value: torch.Tensor,
                            b_value: torch.Tensor | None, num_heads: int, slot_log_weight: torch.Tensor | None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the folded slot attention; inputs are checked by ``infvideo.ops``.

    query [S, Q, D] (any float), coef [S, N, e], w_key / w_value [D, e], b_value [D] or None,
    slot_log_weight [N] or None. Returns the context [S, Q, D] (query's dtype) and the mass
    [S, ⌈H·Q/16⌉, N] (float32): Σ of the weights r over each group of 16 consecutive folded rows h·Q + q.
    """
    s, q_len, model = query.shape
    n, width = coef.shape[1], coef.shape[2]
    d = model // num_heads
    # In the query's own dtype: with split products the query is taken to float32 below.
    context = torch.empty(s, q_len, model, device=query.device, dtype=query.dtype)
    rows = num_heads * q_len
    device = query.device
    precision = products.precision(device)
    if coef.dtype != torch.float32 or coef.stride(-1) != 1:
        coef = coef.to(torch.float32).contiguous()
    if slot_log_weight is not None and (slot_log_weight.dtype != torch.float32 or slot_log_weight.stride(0) != 1):
        slot_log_weight = slot_log_weight.to(torch.float32).contiguous()
    dots = split_precision(device)
    split = CONFIG["split"] and takes_split_products(device)
    if split:  # the split products read the query's and W_v's low parts from memory, with their strides
        query, query_low = _with_low_part(query)
        w_value, w_value_low = _with_low_part(w_value)
    elif query.stride(0) != q_len * query.stride(1):
        query = query.contiguous()  # its S·Q rows must be evenly strided for the head product below

    # u [H, S·Q, e]: each head's queries of all streams through its d rows of W_k, as one product per
    # head; with split products transposed, uᵀ = W_k,hᵀ q_hᵀ, so that the query, read along its
    # head's d columns, is the shared-memory operand.
    folded = torch.empty(num_heads, s * q_len, width, device=device, dtype=torch.float32)
    if split:
        head_products(w_key, (0, d * w_key.stride(0), w_key.stride(1), w_key.stride(0)),
                      query, (0, d * query.stride(2), query.stride(2), query.stride(1)),
                      folded, (0, folded.stride(0), 1, width), width, s * q_len, d, num_heads, 1, precision,
                      tiles=CONFIG["query_tiles"], b_low=query_low)
    else:
        head_products(query, (0, d * query.stride(2), query.stride(1), query.stride(2)),
                      w_key, (0, d * w_key.stride(0), w_key.stride(0), w_key.stride(1)),
                      folded, (0, folded.stride(0), width, 1), s * q_len, width, d, num_heads, 1, precision,
                      tiles=CONFIG["query_tiles"])
    # Row h·Q + q of stream s in u's layout: (stream, head, query) strides.
    u_strides = (q_len * width, folded.stride(0), width)

    groups = cdiv(rows, QUERY_GROUP)
    mass = torch.empty(s, groups, n, device=device, dtype=torch.float32)
    block_r = max(QUERY_GROUP, min(CONFIG["rows"], next_power_of_2(rows)))
    block_n = max(16, next_power_of_2(n))
    most_slots = min(CONFIG["slot_tile"], CONFIG["scores_per_warp"] * CONFIG["warps"] // block_r)
    one_tile = block_n <= most_slots
    block_n = min(block_n, max(16, most_slots))
    # With split products the weights' low parts are written for the mix (unused otherwise).
    weights = torch.empty(s, rows, n, device=device, dtype=torch.float32)
    weights_low = torch.empty_like(weights) if split else weights
    _launch_softmax((cdiv(rows, block_r), s),
                    folded, coef, slot_log_weight if slot_log_weight is not None else coef, weights,
                    weights_low, mass, rows, q_len, n, width, groups, 1.0 / math.sqrt(d),
                    *u_strides, coef.stride(0), coef.stride(1), weights.stride(0), weights.stride(1),
                    mass.stride(0), mass.stride(1),
                    HAS_LOGW=slot_log_weight is not None, ONE_TILE=one_tile, PRECISION=precision, SPLIT=split,
                    SPLIT_PRECISION=dots, GROUP=QUERY_GROUP, BLOCK_R=block_r, BLOCK_N=block_n,
                    BLOCK_E=CONFIG["block_e"], STAGES=CONFIG["stages"], num_warps=CONFIG["warps"])
    # Σ_n r_n B_n [H, S·Q, e], in u's layout.
    mixed = torch.empty_like(folded)
    block_e, block_r, block_n = product_blocks(CONFIG["mix_tiles"], width, rows, n)  # Bᵀ [e, N] by rᵀ [N, rows]
    warps, stages = CONFIG["mix_tiles"][3:]
    _launch_mix((cdiv(width, block_e) * cdiv(rows, block_r), s),
                weights, weights_low, coef, mixed, rows, q_len, n, width, weights.stride(0), weights.stride(1),
                coef.stride(0), coef.stride(1), *u_strides, PRECISION=precision, SPLIT=split, SPLIT_PRECISION=dots,
                BLOCK_E=block_e, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=warps, num_stages=stages)

    # context[s, q, h·d:(h+1)·d] = Σ_n r_n B_n of row h·Q + q through the head's d rows of W_v, + b_v:
    # one product per head over all S·Q rows.
    head_products(mixed, (0, mixed.stride(0), width, 1),
                  w_value, (0, d * w_value.stride(0), w_value.stride(1), w_value.stride(0)),
                  context, (0, d, model, 1), s * q_len, d, width, num_heads, 1, precision,
                  bias=b_value, bias_strides=(0, 0) if b_value is None else (d * b_value.stride(0), b_value.stride(0)),
                  tiles=CONFIG["context_tiles"], b_low=w_value_low if split else None)
    return context, mass
