"""Continuous attention over rectangular bins: softmax over N slots with per-slot log-weights.

r_n = exp(a_n + log w_n) / (Σ_k exp(a_k + log w_k) + exp(log m_∅)), a = q·K_n/√d, is the exact
integral of the Gibbs density over the bins (SPEC section 8); the optional null slot (score 0,
weight m_∅) is the paper preset's trapezoid mass outside every bin. One program per (stream, head,
block of 16 queries) — for one stream, a head-only grid of 12 programs left the step waiting on
this kernel: pass 1 finds the running max and normaliser over N tiles, pass 2
forms the probabilities, accumulates the context Σ_n r_n V_n and writes each bin's attention mass
summed over the block's queries, [S, H·QB, N], for the next sticky step (the samplers add groups). N is small (≤ a few thousand), so reading
K twice costs less than holding the context rescaling of a one-pass online softmax.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2


@triton.jit
def _slot_scores(q, k_base, logw_ptr, rows, mask_n, cols, mask_d, stride_kn,
                 HAS_LOGW: tl.constexpr, IEEE: tl.constexpr):
    """Scores q·K_n (+ log w_n) of one tile of slots, [BLOCK_Q, BLOCK_N]."""
    k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=mask_n[:, None] & mask_d[None, :],
                other=0.0)
    if IEEE:
        scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        scores = tl.dot(q, tl.trans(k))
    if HAS_LOGW:
        scores += tl.load(logw_ptr + rows, mask=mask_n, other=0.0)[None, :]
    return scores


@triton.jit
def _running_max_sum(scores, mask_n, m_i, l_i):
    """The online softmax's row maximum and normaliser after one more tile of scores."""
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    return m_new, l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(scores - m_new[:, None]), axis=1)


@triton.jit
def _slot_attention_kernel(
    q_ptr, k_ptr, v_ptr, logw_ptr, ctx_ptr, mass_ptr,
    Q, N, HEAD_DIM, null_logw, sm_scale,
    stride_qs, stride_qq, stride_ks, stride_kn, stride_vs, stride_vn,
    stride_cs, stride_cq, stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr, IEEE: tl.constexpr, ONE_TILE: tl.constexpr,
    GROUP: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # GROUPS blocks of GROUP queries per program; the mass is summed per block of GROUP queries.
    BLOCK_Q: tl.constexpr = GROUP * GROUPS
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    qb = tl.program_id(2)
    blocks = tl.cdiv(Q, GROUP)
    groups = qb * GROUPS + tl.arange(0, GROUPS)
    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_q = offs_q < Q
    mask_d = offs_d < HEAD_DIM
    cols = h * HEAD_DIM + offs_d

    q = tl.load(q_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :],
                mask=mask_q[:, None] & mask_d[None, :], other=0.0)
    q = q.to(tl.float32) * sm_scale
    if not IEEE:
        q = q.to(k_ptr.dtype.element_ty)

    if HAS_NULL:
        m_i = tl.zeros([BLOCK_Q], dtype=tl.float32) + null_logw
        l_i = tl.zeros([BLOCK_Q], dtype=tl.float32) + 1.0
    else:
        m_i = tl.zeros([BLOCK_Q], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)

    if ONE_TILE:
        # Every slot in one tile: K is read once, the scores stay in registers for pass 2.
        mask_n = offs_n < N
        kept = _slot_scores(q, k_ptr + s * stride_ks, logw_ptr, offs_n, mask_n, cols, mask_d, stride_kn,
                            HAS_LOGW, IEEE)
        m_i, l_i = _running_max_sum(kept, mask_n, m_i, l_i)
    else:
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + offs_n
            mask_n = rows < N
            scores = _slot_scores(q, k_ptr + s * stride_ks, logw_ptr, rows, mask_n, cols, mask_d, stride_kn,
                                  HAS_LOGW, IEEE)
            m_i, l_i = _running_max_sum(scores, mask_n, m_i, l_i)

    inv_l = 1.0 / l_i
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < N
        if ONE_TILE:
            scores = kept
        else:
            scores = _slot_scores(q, k_ptr + s * stride_ks, logw_ptr, rows, mask_n, cols, mask_d, stride_kn,
                                  HAS_LOGW, IEEE)
        v = tl.load(v_ptr + s * stride_vs + rows[:, None] * stride_vn + cols[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        p = tl.exp(scores - m_i[:, None]) * inv_l[:, None]
        p = tl.where(mask_q[:, None] & mask_n[None, :], p, 0.0)
        if IEEE:
            acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        per_group = tl.sum(tl.reshape(p, (GROUPS, GROUP, BLOCK_N)), axis=1)
        tl.store(mass_ptr + s * stride_ms + (h * blocks + groups)[:, None] * stride_mg + rows[None, :], per_group,
                 mask=(groups < blocks)[:, None] & mask_n[None, :])

    tl.store(ctx_ptr + s * stride_cs + offs_q[:, None] * stride_cq + cols[None, :],
             acc.to(ctx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])


# The mass is summed over groups of this many queries per head: the op's output shape
# (infvideo.ops: G = H·⌈Q/16⌉), and the smallest tile a tensor-core dot takes.
QUERY_GROUP = 16



_launch_slot_attention = CachedLaunch(_slot_attention_kernel)

@on_input_device
def slot_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                   slot_log_weight: torch.Tensor | None, null_log_weight: float | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the slot attention; inputs are checked by ``infvideo.ops``.

    query [S, Q, D], keys/values [S, N, D] (last strides 1, same dtype), slot_log_weight [N] fp32.
    Returns the context [S, Q, D] (query's dtype) and the mass [S, H·⌈Q/16⌉, N] (fp32, summed over
    each group of QUERY_GROUP queries).
    """
    s, q_len, model = query.shape
    n = keys.shape[1]
    d = model // num_heads
    block_q = QUERY_GROUP
    blocks = cdiv(q_len, block_q)
    ctx = torch.empty(s, q_len, model, device=query.device, dtype=query.dtype)
    mass = torch.empty(s, num_heads * blocks, n, device=query.device, dtype=torch.float32)
    block_d = max(16, next_power_of_2(d))
    # With many streams a program takes two blocks of queries, so each head's K and V are read
    # half as often (H100, S = 64: about a third less time with bf16 K/V, a fifth with fp32); few streams keep
    # one block per program for more programs (S = 16 measured the same either way).
    groups = 2 if s >= 16 and blocks > 1 else 1
    warps = 4 * groups
    # A [BLOCK_Q, BLOCK_N] score tile of at most 1024 fp32 values per warp stays in registers;
    # when that covers every slot, K is read once (ONE_TILE).
    block_n = max(16, min(next_power_of_2(n), 1024 * warps // (block_q * groups)))
    _launch_slot_attention((s, num_heads, cdiv(blocks, groups)),
        query, keys, values, slot_log_weight if slot_log_weight is not None else keys, ctx, mass,
        q_len, n, d, 0.0 if null_log_weight is None else float(null_log_weight), 1.0 / math.sqrt(d),
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        ctx.stride(0), ctx.stride(1), mass.stride(0), mass.stride(1),
        HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None, ONE_TILE=n <= block_n,
        # float32 K/V use exact (IEEE) fp32 dots; half types use the tensor cores with fp32
        # accumulation, except under the CPU interpreter, whose bf16 dot is wrong (Triton 3.9).
        IEEE=keys.dtype == torch.float32 or (keys.device.type == "cpu" and keys.dtype == torch.bfloat16),
        GROUP=block_q, GROUPS=groups, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps,
    )
    return ctx, mass
