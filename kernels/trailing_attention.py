"""The folded slot attention of each stream, run beside the consolidation that writes its coefficients.

At many streams the step's consolidation streams the tokens at the memory bandwidth while the
tensor cores idle, and the attention after it (K|V products, softmax, context) runs on the tensor
cores while the memory idles. Each stream's attention needs only that stream's coefficients, and
the consolidation's grid finishes the streams in order (its program ids walk the bins of one
stream before the next). So this kernel runs on a second CUDA stream beside the consolidation:
a persistent grid, fewer programs than the GPU has multiprocessors, takes (stream, block of
folded query rows) items in stream order; each waits until every consolidation program of its
stream has counted itself done (``consolidate.rect_consolidate``'s ``done``), then computes, for
its rows h·Q + q (SPEC section 8's algebra, as ``factored_attention``):

    r = softmax_n(u · B_n / √d + log w_n)       u = W_k,hᵀ q_h, given (one product before the step)
    m = Σ_n r_n B_n                             per slice of e ...
    context_h = W_v,h m + b_v,h                 ... multiplied straight into W_v

and the rows' mass per group of 16 folded rows. Nothing but the context and the mass leaves the
program: B is read from L2, where the consolidation has just written it. The consolidation never
waits for this kernel, and this kernel's programs leave multiprocessors free, so the two cannot
deadlock whatever order the GPU starts them in.

The products take the coefficients in the projections' half type (the consolidation writes that
copy) with float32 accumulation, as the K/V way's products do.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._counters import wait_for_count
from ._online_softmax import store_group_mass

# Folded rows are summed into one mass row per group of this many (as factored_attention's).
QUERY_GROUP = 16


@triton.jit
def _dot(a, b, acc, FLOAT32: tl.constexpr):
    # FLOAT32: the CPU interpreter, whose bfloat16 dot is wrong (Triton 3.9), multiplies exactly in float32.
    if FLOAT32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _trailing_attention_kernel(
    u_ptr, c_ptr, wv_ptr, bv_ptr, logw_ptr, ctx_ptr, mass_ptr, done_ptr,
    ITEMS, BLOCKS, Q_LEN, N, WIDTH, HEAD_DIM, ready, sm_scale,
    stride_us, stride_uh, stride_uq, stride_cs, stride_cn, stride_wv,
    stride_xs, stride_xq, stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, HAS_BIAS: tl.constexpr, WAIT: tl.constexpr,
    HEADS: tl.constexpr, Q_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr, GROUP: tl.constexpr, FLOAT32_DOTS: tl.constexpr,
):
    # Item i is (stream i // BLOCKS, block i % BLOCKS of HEADS whole heads); row r of a block is
    # query r % Q_BLOCK of the block's head r // Q_BLOCK (rows past Q_LEN padding). Its context is a
    # [rows, HEADS·BLOCK_D] product of which each row keeps its own head's columns.
    BLOCK_R: tl.constexpr = HEADS * Q_BLOCK
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_j = tl.arange(0, HEADS * BLOCK_D)
    mask_n = offs_n < N
    row_head = offs_r // Q_BLOCK
    row_query = offs_r % Q_BLOCK
    mask_r = row_query < Q_LEN
    col_head = offs_j // BLOCK_D
    col_dim = offs_j % BLOCK_D
    mask_j = col_dim < HEAD_DIM
    own_head = row_head[:, None] == col_head[None, :]
    group_head = tl.arange(0, BLOCK_R // GROUP) * GROUP // Q_BLOCK
    group_query = tl.arange(0, BLOCK_R // GROUP) * GROUP % Q_BLOCK
    if HAS_LOGW:
        logw = tl.load(logw_ptr + offs_n, mask=mask_n, other=0.0)
    for item in range(tl.program_id(0), ITEMS, tl.num_programs(0)):
        s = (item // BLOCKS).to(tl.int64)
        h0 = (item % BLOCKS) * HEADS
        if WAIT:
            wait_for_count(done_ptr + s, ready)
        u_rows = u_ptr + s * stride_us + (h0 + row_head)[:, None].to(tl.int64) * stride_uh \
            + row_query[:, None] * stride_uq
        c_base = c_ptr + s * stride_cs
        # Scores [rows, slots], every slot in one tile.
        scores = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
        for e0 in range(0, WIDTH, BLOCK_E):
            cols = e0 + offs_e
            mask_e = cols < WIDTH
            u = tl.load(u_rows + cols[None, :], mask=mask_r[:, None] & mask_e[None, :], other=0.0)
            c = tl.load(c_base + offs_n[:, None] * stride_cn + cols[None, :], mask=mask_n[:, None] & mask_e[None, :],
                        other=0.0)
            scores = _dot(u, tl.trans(c), scores, FLOAT32_DOTS)
        scores = scores * sm_scale
        if HAS_LOGW:
            scores += logw[None, :]
        scores = tl.where(mask_n[None, :], scores, float("-inf"))
        p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]
        p = tl.where(mask_r[:, None], p, 0.0)
        # Each GROUP rows of the block lie in one head (Q_LEN and Q_BLOCK are multiples of GROUP):
        # mass row (h·Q + q) / GROUP of the folded rows, none for the padding.
        store_group_mass(mass_ptr + s * stride_ms, p, ((h0 + group_head) * Q_LEN + group_query) // GROUP,
                         group_query < Q_LEN, offs_n, mask_n, stride_mg, BLOCK_R // GROUP, GROUP, BLOCK_N)
        p = p.to(c_ptr.dtype.element_ty)
        # Σ_n r_n B_n one slice of e at a time, each straight through the heads' columns of W_v.
        w_rows = wv_ptr + ((h0 + col_head) * HEAD_DIM + col_dim)[:, None].to(tl.int64) * stride_wv
        ctx = tl.zeros([BLOCK_R, HEADS * BLOCK_D], dtype=tl.float32)
        for e0 in range(0, WIDTH, BLOCK_E):
            cols = e0 + offs_e
            mask_e = cols < WIDTH
            c = tl.load(c_base + offs_n[:, None] * stride_cn + cols[None, :], mask=mask_n[:, None] & mask_e[None, :],
                        other=0.0)
            mixed = _dot(p, c, tl.zeros([BLOCK_R, BLOCK_E], dtype=tl.float32), FLOAT32_DOTS)
            w = tl.load(w_rows + cols[None, :], mask=mask_j[:, None] & mask_e[None, :], other=0.0)
            ctx = _dot(mixed.to(w.dtype), tl.trans(w), ctx, FLOAT32_DOTS)
        if HAS_BIAS:
            ctx += tl.load(bv_ptr + (h0 + col_head) * HEAD_DIM + col_dim, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        out = ctx_ptr + s * stride_xs + row_query[:, None] * stride_xq + ((h0 + col_head) * HEAD_DIM + col_dim)[None, :]
        tl.store(out, ctx.to(ctx_ptr.dtype.element_ty), mask=own_head & mask_r[:, None] & mask_j[None, :])


_launch = CachedLaunch(_trailing_attention_kernel)

# Rows per block (whole heads, padded to a power of two), slice of e per step, warps, and the
# programs per multiprocessor; the grid leaves at least one multiprocessor to the consolidation.
CONFIG = {"rows": 64, "block_e": 64, "warps": 8, "stages": 2, "programs_per_sm": 0.5}


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def programs(items: int, device: torch.device) -> int:
    """The persistent grid: CONFIG's programs per multiprocessor, fewer than the multiprocessors
    (so that the consolidation always has one to run on), at most one per item."""
    if device.type != "cuda":
        return max(1, min(items, 4))
    sms = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(items, sms - 1, int(sms * CONFIG["programs_per_sm"])))


def query_block(q_len: int) -> int:
    """Rows per head in a block: Q padded to a power of two."""
    return max(QUERY_GROUP, next_power_of_2(q_len))


@on_input_device
def trailing_attention(folded: torch.Tensor, coef: torch.Tensor, w_value: torch.Tensor, b_value: torch.Tensor | None,
                       slot_log_weight: torch.Tensor | None, q_len: int, done: torch.Tensor | None, ready: int,
                       context: torch.Tensor, mass: torch.Tensor, num_programs: int | None = None) -> None:
    """Launch the attention beside the consolidation; inputs are checked by the op layer.

    folded u [H, S·Q, e] (head-major, in coef's dtype), coef [S, N, e] in the projections' half type
    (last stride 1), w_value [D, e], b_value [D] or None, slot_log_weight [N] float32 or None;
    ``done`` int32 [S]: the counts the consolidation adds per stream (None: do not wait), ``ready``:
    the count at which a stream's coefficients are complete. Writes ``context`` [S, Q, D] and
    ``mass`` [S, H·Q / 16, N] float32.
    """
    heads, _, width = folded.shape
    s, n, _ = coef.shape
    model = w_value.shape[0]
    d = model // heads
    q_block = query_block(q_len)
    heads_per_block = max(1, CONFIG["rows"] // q_block)
    while heads % heads_per_block:
        heads_per_block //= 2
    items = s * (heads // heads_per_block)
    grid = num_programs or programs(items, coef.device)
    _launch((grid,),
            folded, coef, w_value, b_value if b_value is not None else w_value,
            slot_log_weight if slot_log_weight is not None else coef, context, mass,
            done if done is not None else mass,
            items, heads // heads_per_block, q_len, n, width, d, ready, d ** -0.5,
            q_len * width, folded.stride(0), width, coef.stride(0), coef.stride(1), w_value.stride(0),
            context.stride(0), context.stride(1), mass.stride(0), mass.stride(1),
            HAS_LOGW=slot_log_weight is not None, HAS_BIAS=b_value is not None, WAIT=done is not None,
            HEADS=heads_per_block, Q_BLOCK=q_block, BLOCK_N=max(16, next_power_of_2(n)),
            BLOCK_D=max(16, next_power_of_2(d)), BLOCK_E=CONFIG["block_e"], GROUP=QUERY_GROUP,
            FLOAT32_DOTS=coef.device.type != "cuda",
            num_warps=CONFIG["warps"], num_stages=CONFIG["stages"])
