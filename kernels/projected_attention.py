"""Slot attention with the key and value projections inside: one launch for K = B W_kᵀ + b_k,
V = B W_vᵀ + b_v and the softmax over the slots, for few streams.

With one or a few streams the step's K/V product and its slot attention are each a few
microseconds of launch and latency for little work. Here one program per (stream, head, tile of
BLOCK_N slots) makes its tile's K_h and V_h [BLOCK_N, d] from the coefficients B (in the
projections' dtype) and the head's rows of W_k and W_v, scores every query against them
(flash-decoding: a partial softmax per tile, its maximum m_t, sum l_t, Σ p V and weights p kept
in a float32 workspace) and counts itself done on its (stream, head). The head's last program
(the counter's acquire makes the others' partials visible) combines them, with the null slot
where the preset has one: the context Σ_t e^{m_t - m} Σ p V / l and the mass of each slot summed
over groups of 16 queries, in ``slot_attention``'s layout [S, H·⌈Q/16⌉, N].

K and V are rounded to the projections' dtype before the scores and the mix, as the cuBLAS product
in that dtype would leave them for ``slot_attention``. Float32 weights take exact (IEEE) float32
dots, as does the CPU interpreter for every dtype (its bfloat16 dot is wrong).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._online_softmax import softmax_start, store_group_mass


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b: exact float32 for IEEE, else tensor cores on the operands' dtype."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _projected_slot_attention_kernel(
    q_ptr, b_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr, logw_ptr,
    part_ptr, weights_ptr, ctx_ptr, mass_ptr, done_ptr,
    Q, N, E, HEAD_DIM, HEADS, TILES, null_logw, sm_scale,
    stride_qs, stride_qq, stride_bs, stride_bn, stride_wd, stride_we, stride_cs, stride_cq, stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr, HAS_KEY_BIAS: tl.constexpr, HAS_VALUE_BIAS: tl.constexpr,
    IEEE: tl.constexpr, GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    t = tl.program_id(2)
    slots = t * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = slots < N
    offs_q = tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    cols = h * HEAD_DIM + offs_d
    dtype = b_ptr.dtype.element_ty

    # K_h and V_h of this tile of slots, a slice of e at a time.
    keys = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    values = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < E
        b = tl.load(b_ptr + s * stride_bs + slots[:, None] * stride_bn + offs_e[None, :],
                    mask=mask_n[:, None] & mask_e[None, :], other=0.0)
        w_at = cols[None, :] * stride_wd + offs_e[:, None] * stride_we  # [BLOCK_E, BLOCK_D]: W_hᵀ
        w_mask = mask_d[None, :] & mask_e[:, None]
        keys = _dot(b, tl.load(wk_ptr + w_at, mask=w_mask, other=0.0), keys, IEEE)
        values = _dot(b, tl.load(wv_ptr + w_at, mask=w_mask, other=0.0), values, IEEE)
    if HAS_KEY_BIAS:
        keys += tl.load(bk_ptr + cols, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    if HAS_VALUE_BIAS:
        values += tl.load(bv_ptr + cols, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    keys = keys.to(dtype)
    values = values.to(dtype)

    # This tile's partial softmax of every query.
    q = tl.load(q_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :],
                mask=mask_q[:, None] & mask_d[None, :], other=0.0)
    q = (q.to(tl.float32) * sm_scale).to(dtype)
    scores = _dot(q, tl.trans(keys), tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32), IEEE)
    if HAS_LOGW:
        scores += tl.load(logw_ptr + slots, mask=mask_n, other=0.0)[None, :]
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_t = tl.max(scores, axis=1)
    p = tl.exp(scores - m_t[:, None])
    mixed = _dot(p.to(dtype), values, tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32), IEEE)

    # Partials at part[s, h, t] = [m_t, l_t, Σ p V] per query and weights[s, h, t] = p.
    head = s * HEADS + h
    part = part_ptr + (head * TILES + t) * (BLOCK_Q * (BLOCK_D + 2))
    tl.store(part + offs_q, m_t)
    tl.store(part + BLOCK_Q + offs_q, tl.sum(p, axis=1))
    tl.store(part + 2 * BLOCK_Q + offs_q[:, None] * BLOCK_D + offs_d[None, :], mixed)
    tile_weights = weights_ptr + (head * TILES + t) * (BLOCK_Q * BLOCK_N)
    tl.store(tile_weights + offs_q[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :], p)

    # Every thread's partials are stored before the count (the barrier), and the count's acq_rel
    # makes them visible to the head's last program, which reads them from L2 (.cg).
    tl.debug_barrier()
    if tl.atomic_add(done_ptr + head, 1, sem="acq_rel", scope="gpu") == TILES - 1:
        first = part_ptr + head * TILES * (BLOCK_Q * (BLOCK_D + 2))
        m, l_i = softmax_start(null_logw, BLOCK_Q, HAS_NULL)
        for i in range(0, TILES):
            m = tl.maximum(m, tl.load(first + i * (BLOCK_Q * (BLOCK_D + 2)) + offs_q, cache_modifier=".cg"))
        if HAS_NULL:
            l_i = tl.exp(null_logw - m)  # the null slot's term, rescaled to the final maximum
        ctx = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
        for i in range(0, TILES):
            tile = first + i * (BLOCK_Q * (BLOCK_D + 2))
            rescale = tl.exp(tl.load(tile + offs_q, cache_modifier=".cg") - m)
            l_i += rescale * tl.load(tile + BLOCK_Q + offs_q, cache_modifier=".cg")
            ctx += rescale[:, None] * tl.load(tile + 2 * BLOCK_Q + offs_q[:, None] * BLOCK_D + offs_d[None, :],
                                              cache_modifier=".cg")
        inv_l = 1.0 / l_i
        tl.store(ctx_ptr + s * stride_cs + offs_q[:, None] * stride_cq + cols[None, :],
                 (ctx * inv_l[:, None]).to(ctx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])
        blocks = tl.cdiv(Q, GROUP)
        head_mass = mass_ptr + s * stride_ms + (h * blocks) * stride_mg
        for i in range(0, TILES):
            tile_slots = i * BLOCK_N + tl.arange(0, BLOCK_N)
            scale = tl.exp(tl.load(first + i * (BLOCK_Q * (BLOCK_D + 2)) + offs_q, cache_modifier=".cg") - m) * inv_l
            w = tl.load(weights_ptr + (head * TILES + i) * (BLOCK_Q * BLOCK_N) + offs_q[:, None] * BLOCK_N
                        + tl.arange(0, BLOCK_N)[None, :], cache_modifier=".cg")
            w = tl.where(mask_q[:, None], w * scale[:, None], 0.0)
            store_group_mass(head_mass, w, 0, tile_slots, tile_slots < N, blocks, stride_mg, BLOCK_Q, BLOCK_N, GROUP)


_launch = CachedLaunch(_projected_slot_attention_kernel)

# Slots per program and the slice of e per product step; measured on the H200 (bench/README).
CONFIG = {"block_n": 32, "block_e": 64, "num_warps": 4, "num_stages": 2}
# The mass's groups of queries: slot_attention's (attention.QUERY_GROUP).
QUERY_GROUP = 16
# The most queries and head width a program holds in registers.
MAX_QUERIES, MAX_HEAD_DIM = 64, 128


def applies(query: torch.Tensor, coef: torch.Tensor, num_heads: int) -> bool:
    """Whether a program can hold every query of a head: Q ≤ MAX_QUERIES and d ≤ MAX_HEAD_DIM."""
    return query.shape[1] <= MAX_QUERIES and query.shape[2] // num_heads <= MAX_HEAD_DIM


@on_input_device
def projected_slot_attention(query: torch.Tensor, coef: torch.Tensor, w_key: torch.Tensor, b_key: torch.Tensor | None,
                             w_value: torch.Tensor, b_value: torch.Tensor | None, num_heads: int,
                             slot_log_weight: torch.Tensor | None, null_log_weight: float | None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the slot attention over K = coef W_kᵀ + b_k and V = coef W_vᵀ + b_v; the caller
    checks the inputs (the fused step: LongTermMemory's, and :func:`applies`).

    query [S, Q, D] (last stride 1), coef [S, N, e] in the weights' dtype (last stride 1), w_key /
    w_value [D, e] with biases [D] or None, slot_log_weight [N] float32 or None, null_log_weight
    the null slot's or None. Returns ``slot_attention``'s (context [S, Q, D] in the query's dtype,
    mass [S, H·⌈Q/16⌉, N] float32).
    """
    s, q_len, model = query.shape
    n, e = coef.shape[1], coef.shape[2]
    d = model // num_heads
    device = query.device
    block_q = max(QUERY_GROUP, next_power_of_2(q_len))
    block_d = max(16, next_power_of_2(d))
    block_n = CONFIG["block_n"]
    tiles = cdiv(n, block_n)
    part = torch.empty(s * num_heads * tiles * block_q * (block_d + 2), device=device, dtype=torch.float32)
    weights = torch.empty(s * num_heads * tiles * block_q * block_n, device=device, dtype=torch.float32)
    done = torch.zeros(s * num_heads, device=device, dtype=torch.int32)
    context = torch.empty(s, q_len, model, device=device, dtype=query.dtype)
    mass = torch.empty(s, num_heads * cdiv(q_len, QUERY_GROUP), n, device=device, dtype=torch.float32)
    _launch((s, num_heads, tiles),
            query, coef, w_key, b_key if b_key is not None else w_key, w_value,
            b_value if b_value is not None else w_value,
            slot_log_weight if slot_log_weight is not None else part, part, weights, context, mass, done,
            q_len, n, e, d, num_heads, tiles, 0.0 if null_log_weight is None else float(null_log_weight),
            1.0 / math.sqrt(d), query.stride(0), query.stride(1), coef.stride(0), coef.stride(1),
            w_key.stride(0), w_key.stride(1), context.stride(0), context.stride(1), mass.stride(0), mass.stride(1),
            HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None,
            HAS_KEY_BIAS=b_key is not None, HAS_VALUE_BIAS=b_value is not None,
            IEEE=coef.dtype == torch.float32 or device.type == "cpu", GROUP=QUERY_GROUP, BLOCK_Q=block_q,
            BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_E=min(CONFIG["block_e"], max(16, next_power_of_2(e))),
            num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
    return context, mass
