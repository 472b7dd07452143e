"""Continuous attention over rectangular bins: softmax over N slots with per-slot log-weights.

r_n = exp(a_n + log w_n) / (Σ_k exp(a_k + log w_k) + exp(log m_∅)), a = q·K_n/√d, is the exact
integral of the Gibbs density over the bins (SPEC section 8); the optional null slot (score 0,
weight m_∅) is the paper preset's trapezoid mass outside every bin. One program per (stream, head,
block of 16 queries) — for one stream, a head-only grid of 12 programs left the step waiting on
this kernel: pass 1 finds the running max and normaliser over N tiles, pass 2
forms the probabilities, accumulates the context Σ_n r_n V_n and writes each bin's attention mass
summed over the block's queries, [S, H·QB, N], for the next sticky step (the samplers add groups). N is small (≤ a few thousand), so reading
K twice costs less than holding the context rescaling of a one-pass online softmax. Half-precision
K/V take the tensor cores in their type; float32 K/V take each dot as three TF32 products
(``products.split_dot``), float32-accurate, where the GPU has TF32 tensor cores.

The backward (``slot_attention_backward``) recomputes the probabilities flash-style in two
launches: per block of 16 queries, dq with each row's log-normaliser and δ = Σ_n r_n dr_n; then per
block of slots, dK and dV summed over every query by the program that owns those rows (no atomics).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, gdc_launch_dependents, gdc_wait, next_power_of_2, programmatic_options
from ._online_softmax import running_max_sum, softmax_start, store_group_mass
from .products import split_dot, split_precision, takes_split_products, tf32_high


@triton.jit
def _slot_scores(q, q_low, k_base, logw_ptr, rows, N, cols, mask_d, stride_kn,
                 HAS_LOGW: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr, SPLIT_PRECISION: tl.constexpr):
    """(scores q·K_n (+ log w_n) [BLOCK_Q, BLOCK_N], the slots' mask) of one tile of slots ``rows``;
    with SPLIT, q is the query's TF32 high part and q_low the rest."""
    mask_n = rows < N
    k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=mask_n[:, None] & mask_d[None, :],
                other=0.0)
    if SPLIT:
        k = k.to(tl.float32)
        k_high = tf32_high(k)
        scores = split_dot(q, q_low, tl.trans(k_high), tl.trans(k - k_high), SPLIT_PRECISION)
    elif IEEE:
        scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        scores = tl.dot(q, tl.trans(k))
    if HAS_LOGW:
        scores += tl.load(logw_ptr + rows, mask=mask_n, other=0.0)[None, :]
    return scores, mask_n


@triton.jit
def _add_tile(acc, scores, m_i, inv_l, v, mask_q, rows, mask_n, mass_base, group_rows, group_valid, stride_mg,
              IEEE: tl.constexpr, SPLIT: tl.constexpr, SPLIT_PRECISION: tl.constexpr, GROUPS: tl.constexpr,
              GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc + r·V over one tile of slots (r from the scores and the rows' final maximum and
    normaliser), and the tile's attention mass per group of queries stored."""
    p = tl.exp(scores - m_i[:, None]) * inv_l[:, None]
    p = tl.where(mask_q[:, None] & mask_n[None, :], p, 0.0)
    if SPLIT:
        v = v.to(tl.float32)
        v_high = tf32_high(v)
        p_high = tf32_high(p)
        acc += split_dot(p_high, p - p_high, v_high, v - v_high, SPLIT_PRECISION)
    elif IEEE:
        acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc += tl.dot(p.to(v.dtype), v)
    store_group_mass(mass_base, p, group_rows, group_valid, rows, mask_n, stride_mg, GROUPS, GROUP, BLOCK_N)
    return acc


@triton.jit
def _slot_attention_kernel(
    q_ptr, k_ptr, v_ptr, logw_ptr, ctx_ptr, mass_ptr,
    Q, N, HEAD_DIM, null_logw, sm_scale,
    stride_qs, stride_qq, stride_ks, stride_kn, stride_vs, stride_vn,
    stride_cs, stride_cq, stride_ms, stride_mg,
    HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
    SPLIT_PRECISION: tl.constexpr, ONE_TILE: tl.constexpr, GROUP: tl.constexpr, GROUPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH_V: tl.constexpr, PDL: tl.constexpr,
):
    # GROUPS blocks of GROUP queries per program; the mass is summed per block of GROUP queries.
    BLOCK_Q: tl.constexpr = GROUP * GROUPS
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
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
    q_low = q
    if SPLIT:  # float32 K/V: every dot as three TF32 products (kernels.products.split_dot)
        q = tf32_high(q_low)
        q_low = q_low - q
    elif not IEEE:
        q = q.to(k_ptr.dtype.element_ty)

    m_i, l_i = softmax_start(null_logw, BLOCK_Q, HAS_NULL)

    if ONE_TILE:
        # Every slot in one tile: K is read once, the scores stay in registers for pass 2.
        if PREFETCH_V:  # V's load in flight with K's: one memory round trip less per program
            v_kept = tl.load(v_ptr + s * stride_vs + offs_n[:, None] * stride_vn + cols[None, :],
                             mask=(offs_n < N)[:, None] & mask_d[None, :], other=0.0)
        kept, mask_n = _slot_scores(q, q_low, k_ptr + s * stride_ks, logw_ptr, offs_n, N, cols, mask_d, stride_kn,
                                    HAS_LOGW, IEEE, SPLIT, SPLIT_PRECISION)
        m_i, l_i = running_max_sum(kept, mask_n, m_i, l_i)
    else:
        for n0 in range(0, N, BLOCK_N):
            scores, mask_n = _slot_scores(q, q_low, k_ptr + s * stride_ks, logw_ptr, n0 + offs_n, N, cols, mask_d,
                                          stride_kn, HAS_LOGW, IEEE, SPLIT, SPLIT_PRECISION)
            m_i, l_i = running_max_sum(scores, mask_n, m_i, l_i)

    inv_l = 1.0 / l_i
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    mass_base = mass_ptr + s * stride_ms
    if ONE_TILE:
        # No loop around the one tile: Triton pipelines a loop's V load through shared memory, which
        # with float32 split products took 192 KB and spilled (ptxas, sm_90) where this takes 64 KB.
        if PREFETCH_V:
            v = v_kept
        else:
            v = tl.load(v_ptr + s * stride_vs + offs_n[:, None] * stride_vn + cols[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = _add_tile(acc, kept, m_i, inv_l, v, mask_q, offs_n, mask_n, mass_base, h * blocks + groups,
                        groups < blocks, stride_mg, IEEE, SPLIT, SPLIT_PRECISION, GROUPS, GROUP, BLOCK_N)
    else:
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + offs_n
            scores, mask_n = _slot_scores(q, q_low, k_ptr + s * stride_ks, logw_ptr, rows, N, cols, mask_d,
                                          stride_kn, HAS_LOGW, IEEE, SPLIT, SPLIT_PRECISION)
            v = tl.load(v_ptr + s * stride_vs + rows[:, None] * stride_vn + cols[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            acc = _add_tile(acc, scores, m_i, inv_l, v, mask_q, rows, mask_n, mass_base, h * blocks + groups,
                            groups < blocks, stride_mg, IEEE, SPLIT, SPLIT_PRECISION, GROUPS, GROUP, BLOCK_N)

    tl.store(ctx_ptr + s * stride_cs + offs_q[:, None] * stride_cq + cols[None, :],
             acc.to(ctx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])


# The mass is summed over groups of this many queries per head: the op's output shape
# (infvideo.ops: G = H·⌈Q/16⌉), and the smallest tile a tensor-core dot takes.
QUERY_GROUP = 16



_launch_slot_attention = CachedLaunch(_slot_attention_kernel)

# prefetch_values: with every slot in one tile and 16-bit K/V, V is loaded with K rather than after
# the softmax (float32 V would double the registers it holds). split_float32: float32 K/V take
# three TF32 products per dot where the GPU has TF32 (below); off, float32 dots (to compare).
# warps_per_group: warps per block of QUERY_GROUP queries a program takes; below 16 streams
# apart: on an H200 8 warps won there and lost at 16 and 64 streams, where a program of two blocks
# then has 16 (bench/README.md, "Issue 22, twelfth session"; bench_many_streams_gpu.py --compare warps).
CONFIG = {"prefetch_values": True, "split_float32": True, "warps_per_group": 4, "warps_per_group_few_streams": 8}


def _mass_output(mass_out: torch.Tensor | None, shape: tuple, device: torch.device) -> torch.Tensor:
    """Where the launch writes its mass: ``mass_out`` where that is a contiguous float32 tensor of
    ``shape`` on ``device``, else a new one."""
    if (mass_out is not None and mass_out.shape == shape and mass_out.dtype == torch.float32
            and mass_out.is_contiguous() and mass_out.device == device):
        return mass_out
    return torch.empty(shape, device=device, dtype=torch.float32)


@on_input_device
def slot_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                   slot_log_weight: torch.Tensor | None, null_log_weight: float | None,
                   mass_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the slot attention; inputs are checked by ``infvideo.ops``.

    query [S, Q, D], keys/values [S, N, D] (last strides 1, same dtype), slot_log_weight [N] fp32.
    Returns the context [S, Q, D] (query's dtype) and the mass [S, H·⌈Q/16⌉, N] (fp32, summed over
    each group of QUERY_GROUP queries): written into ``mass_out`` where that is a contiguous float32
    tensor of that shape on the query's device, else into a new tensor.
    """
    s, q_len, model = query.shape
    n = keys.shape[1]
    d = model // num_heads
    block_q = QUERY_GROUP
    blocks = cdiv(q_len, block_q)
    ctx = torch.empty(s, q_len, model, device=query.device, dtype=query.dtype)
    mass = _mass_output(mass_out, (s, num_heads * blocks, n), query.device)
    block_d = max(16, next_power_of_2(d))
    # With many streams a program takes two blocks of queries, so each head's K and V are read
    # half as often (H100, S = 64: about a third less time with bf16 K/V, a fifth with fp32); few streams keep
    # one block per program for more programs (S = 16 measured the same either way).
    groups = 2 if s >= 16 and blocks > 1 else 1
    warps = CONFIG["warps_per_group" if s >= 16 else "warps_per_group_few_streams"] * groups
    # A [BLOCK_Q, BLOCK_N] score tile of at most 1024 fp32 values per warp stays in registers;
    # when that covers every slot, K is read once (ONE_TILE).
    block_n = max(16, min(next_power_of_2(n), 1024 * warps // (block_q * groups)))
    # Float32 K/V take three TF32 products per dot where the GPU has TF32 tensor cores (and in the
    # interpreter, which computes them in float32), on 8 warps: faster than float32 dots on an H200
    # and as accurate (bench/results/h200_float32_projections.md); 4 warps with two query blocks
    # spilled to several times slower. Half K/V take the tensor cores in their type,
    # except under the CPU interpreter, whose bf16 dot is wrong (Triton 3.9): IEEE float32 dots.
    dots = split_precision(query.device)
    split = CONFIG["split_float32"] and keys.dtype == torch.float32 and takes_split_products(query.device)
    ieee = keys.dtype == torch.float32 or (keys.device.type == "cpu" and keys.dtype == torch.bfloat16)
    pdl = programmatic_options(query.device)
    _launch_slot_attention((s, num_heads, cdiv(blocks, groups)),
        query, keys, values, slot_log_weight if slot_log_weight is not None else keys, ctx, mass,
        q_len, n, d, 0.0 if null_log_weight is None else float(null_log_weight), 1.0 / math.sqrt(d),
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        ctx.stride(0), ctx.stride(1), mass.stride(0), mass.stride(1),
        HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None, ONE_TILE=n <= block_n,
        IEEE=ieee, SPLIT=split, SPLIT_PRECISION=dots,
        GROUP=block_q, GROUPS=groups, BLOCK_N=block_n, BLOCK_D=block_d,
        PREFETCH_V=CONFIG["prefetch_values"] and n <= block_n and keys.dtype != torch.float32,
        **pdl, num_warps=8 if split else warps,
        # Float32 K/V over several tiles of slots: no pipelined loads. Staging float32 V for the next
        # tile took more shared memory than an H200 has (head width 64, N = 1,000).
        **({"num_stages": 1} if keys.dtype == torch.float32 and n > block_n else {}),
    )
    return ctx, mass


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with float32 accumulation: exact fp32 for IEEE, else tensor cores on b's dtype."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(b.dtype), b)


@triton.jit
def _mass_grad(gmass_ptr, s, h, blocks, offs_q, rows, mask_q, mask_n, stride_gms, stride_gmg, GROUP: tl.constexpr):
    """The mass output's gradient at (query, slot): its group's row, [BLOCK_Q, BLOCK_N]."""
    groups = h * blocks + offs_q // GROUP
    return tl.load(gmass_ptr + s * stride_gms + groups[:, None] * stride_gmg + rows[None, :],
                   mask=mask_q[:, None] & mask_n[None, :], other=0.0)


@triton.jit
def _probs_and_grads(q, go, lse, k_base, v_base, logw_ptr, gmass_ptr, s, h, blocks, offs_q, mask_q, rows, mask_n,
                     cols, mask_d, stride_kn, stride_vn, stride_gms, stride_gmg, HAS_LOGW: tl.constexpr,
                     HAS_GMASS: tl.constexpr, IEEE: tl.constexpr, GROUP: tl.constexpr):
    """(K, r, dr) of one tile of slots for a block of queries: the keys, the probabilities from
    the rows' log-normaliser, and dr = dc·V (+ the mass gradient of the queries' group)."""
    tile_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=tile_nd, other=0.0)
    v = tl.load(v_base + rows[:, None] * stride_vn + cols[None, :], mask=tile_nd, other=0.0)
    scores = _dot(q, tl.trans(k), IEEE)
    if HAS_LOGW:
        scores += tl.load(logw_ptr + rows, mask=mask_n, other=0.0)[None, :]
    p = tl.where(mask_n[None, :], tl.exp(scores - lse[:, None]), 0.0)
    dr = _dot(go, tl.trans(v), IEEE)
    if HAS_GMASS:
        dr += _mass_grad(gmass_ptr, s, h, blocks, offs_q, rows, mask_q, mask_n, stride_gms, stride_gmg, GROUP)
    return k, p, dr


@triton.jit
def _slot_attention_bwd_query_kernel(
    q_ptr, k_ptr, v_ptr, logw_ptr, go_ptr, gmass_ptr, dq_ptr, lse_ptr, delta_ptr,
    Q, N, HEAD_DIM, null_logw, sm_scale,
    stride_qs, stride_qq, stride_ks, stride_kn, stride_vs, stride_vn, stride_gs, stride_gq,
    stride_gms, stride_gmg, stride_ls,
    HAS_LOGW: tl.constexpr, HAS_NULL: tl.constexpr, HAS_GMASS: tl.constexpr, IEEE: tl.constexpr,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (stream, head, block of GROUP queries): the rows' log-normaliser (pass 1), δ = Σ r dr
    # (pass 2) and dq = Σ_n ∂a_n K_n (pass 3), three sweeps over the N slots, which are few; the
    # log-normaliser and δ go to [S, H, Q] scratch for the key/value kernel.
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_q = tl.program_id(2) * GROUP + tl.arange(0, GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_q = offs_q < Q
    mask_d = offs_d < HEAD_DIM
    cols = h * HEAD_DIM + offs_d
    blocks = tl.cdiv(Q, GROUP)
    tile_qd = mask_q[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :], mask=tile_qd, other=0.0)
    q = q.to(tl.float32) * sm_scale
    go = tl.load(go_ptr + s * stride_gs + offs_q[:, None] * stride_gq + cols[None, :], mask=tile_qd, other=0.0)
    k_base = k_ptr + s * stride_ks
    v_base = v_ptr + s * stride_vs

    m_i, l_i = softmax_start(null_logw, GROUP, HAS_NULL)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < N
        k = tl.load(k_base + rows[:, None] * stride_kn + cols[None, :], mask=mask_n[:, None] & mask_d[None, :],
                    other=0.0)
        scores = _dot(q, tl.trans(k), IEEE)
        if HAS_LOGW:
            scores += tl.load(logw_ptr + rows, mask=mask_n, other=0.0)[None, :]
        m_i, l_i = running_max_sum(scores, mask_n, m_i, l_i)
    lse = m_i + tl.log(l_i)

    delta = tl.zeros([GROUP], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < N
        k, p, dr = _probs_and_grads(q, go, lse, k_base, v_base, logw_ptr, gmass_ptr, s, h, blocks, offs_q, mask_q,
                                    rows, mask_n, cols, mask_d, stride_kn, stride_vn, stride_gms, stride_gmg,
                                    HAS_LOGW, HAS_GMASS, IEEE, GROUP)
        delta += tl.sum(p * dr, axis=1)

    dq = tl.zeros([GROUP, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < N
        k, p, dr = _probs_and_grads(q, go, lse, k_base, v_base, logw_ptr, gmass_ptr, s, h, blocks, offs_q, mask_q,
                                    rows, mask_n, cols, mask_d, stride_kn, stride_vn, stride_gms, stride_gmg,
                                    HAS_LOGW, HAS_GMASS, IEEE, GROUP)
        dq += _dot(p * (dr - delta[:, None]), k, IEEE)

    tl.store(dq_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :],
             (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=tile_qd)
    stats = (s * tl.num_programs(1) + h) * stride_ls + offs_q
    tl.store(lse_ptr + stats, lse, mask=mask_q)
    tl.store(delta_ptr + stats, delta, mask=mask_q)


@triton.jit
def _slot_attention_bwd_slots_kernel(
    q_ptr, k_ptr, v_ptr, logw_ptr, go_ptr, gmass_ptr, dk_ptr, dv_ptr, lse_ptr, delta_ptr,
    Q, N, HEAD_DIM, sm_scale,
    stride_qs, stride_qq, stride_ks, stride_kn, stride_vs, stride_vn, stride_gs, stride_gq,
    stride_gms, stride_gmg, stride_ls,
    HAS_LOGW: tl.constexpr, HAS_GMASS: tl.constexpr, IEEE: tl.constexpr,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (stream, head, block of BLOCK_N slots) owns its rows of dK and dV and sums over every
    # query itself: no atomics, the same result on every run.
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    rows = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_g = tl.arange(0, GROUP)
    mask_n = rows < N
    mask_d = offs_d < HEAD_DIM
    cols = h * HEAD_DIM + offs_d
    blocks = tl.cdiv(Q, GROUP)
    tile_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_ptr + s * stride_ks + rows[:, None] * stride_kn + cols[None, :], mask=tile_nd, other=0.0)
    v = tl.load(v_ptr + s * stride_vs + rows[:, None] * stride_vn + cols[None, :], mask=tile_nd, other=0.0)
    if HAS_LOGW:
        logw = tl.load(logw_ptr + rows, mask=mask_n, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    stats = (s * tl.num_programs(1) + h) * stride_ls
    for q0 in range(0, Q, GROUP):
        offs_q = q0 + offs_g
        mask_q = offs_q < Q
        tile_qd = mask_q[:, None] & mask_d[None, :]
        q = tl.load(q_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :], mask=tile_qd, other=0.0)
        q = q.to(tl.float32) * sm_scale
        go = tl.load(go_ptr + s * stride_gs + offs_q[:, None] * stride_gq + cols[None, :], mask=tile_qd, other=0.0)
        lse = tl.load(lse_ptr + stats + offs_q, mask=mask_q, other=0.0)
        delta = tl.load(delta_ptr + stats + offs_q, mask=mask_q, other=0.0)
        scores = _dot(q, tl.trans(k), IEEE)
        if HAS_LOGW:
            scores += logw[None, :]
        p = tl.where(mask_q[:, None] & mask_n[None, :], tl.exp(scores - lse[:, None]), 0.0)
        dr = _dot(go, tl.trans(v), IEEE)
        if HAS_GMASS:
            dr += _mass_grad(gmass_ptr, s, h, blocks, offs_q, rows, mask_q, mask_n, stride_gms, stride_gmg, GROUP)
        dv += _dot(tl.trans(p), go, IEEE)
        dk += _dot(tl.trans(p * (dr - delta[:, None])), q, IEEE)
    tl.store(dk_ptr + s * stride_ks + rows[:, None] * stride_kn + cols[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=tile_nd)
    tl.store(dv_ptr + s * stride_vs + rows[:, None] * stride_vn + cols[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=tile_nd)


_launch_slot_attention_bwd_query = CachedLaunch(_slot_attention_bwd_query_kernel)
_launch_slot_attention_bwd_slots = CachedLaunch(_slot_attention_bwd_slots_kernel)


@on_input_device
def slot_attention_backward(grad_context: torch.Tensor, grad_mass: torch.Tensor | None, query: torch.Tensor,
                            keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                            slot_log_weight: torch.Tensor | None, null_log_weight: float | None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the slot attention's backward; arguments come from the op's autograd (``infvideo.ops``).

    grad_context [S, Q, D], grad_mass [S, H·⌈Q/16⌉, N] or None, and the forward's inputs (query,
    keys, values with last stride 1, slot_log_weight [N] fp32). Returns dq, dK, dV in the dtypes
    of query, keys and values. Two launches: per block of queries (dq, and each row's
    log-normaliser and δ), then per block of slots (dK, dV).
    """
    s, q_len, model = query.shape
    n = keys.shape[1]
    d = model // num_heads
    group = QUERY_GROUP
    values_dtype = values.dtype
    # Contiguous copies share one set of strides per pair (query / grad, K / V / dK / dV).
    query, keys, values = query.contiguous(), keys.contiguous(), values.to(keys.dtype).contiguous()
    grad_context = grad_context.contiguous()
    dq = torch.empty_like(query)
    dk = torch.empty_like(keys)
    dv = torch.empty_like(keys)
    stats = torch.empty(2, s * num_heads, q_len, device=query.device, dtype=torch.float32)
    gmass = grad_mass.float().contiguous() if grad_mass is not None else stats
    block_d = max(16, next_power_of_2(d))
    block_n = max(16, min(64, next_power_of_2(n)))
    logw = slot_log_weight if slot_log_weight is not None else keys
    # As in the forward: exact fp32 dots for float32 K/V (and the interpreter's bf16).
    ieee = keys.dtype == torch.float32 or (keys.device.type == "cpu" and keys.dtype == torch.bfloat16)
    common = (query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), keys.stride(0), keys.stride(1),
              grad_context.stride(0), grad_context.stride(1),
              gmass.stride(0) if grad_mass is not None else 0, gmass.stride(1) if grad_mass is not None else 0,
              stats.stride(1))
    _launch_slot_attention_bwd_query((s, num_heads, cdiv(q_len, group)),
        query, keys, values, logw, grad_context, gmass, dq, stats[0], stats[1],
        q_len, n, d, 0.0 if null_log_weight is None else float(null_log_weight), 1.0 / math.sqrt(d), *common,
        HAS_LOGW=slot_log_weight is not None, HAS_NULL=null_log_weight is not None, HAS_GMASS=grad_mass is not None,
        IEEE=ieee, GROUP=group, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )
    _launch_slot_attention_bwd_slots((s, num_heads, cdiv(n, block_n)),
        query, keys, values, logw, grad_context, gmass, dk, dv, stats[0], stats[1],
        q_len, n, d, 1.0 / math.sqrt(d), *common,
        HAS_LOGW=slot_log_weight is not None, HAS_GMASS=grad_mass is not None,
        IEEE=ieee, GROUP=group, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )
    return dq, dk, dv.to(values_dtype)
