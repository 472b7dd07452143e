"""Continuous attention for smooth (Gaussian) bases by quadrature, fused.

The score s(t) = aᵀψ(t) has no closed-form normaliser, so Z = ∫ exp s and r_n = ∫ p ψ_n are taken
with the trapezoid rule on T points. One program per (stream, head): a = q·Kᵀ/√d [Q, N] stays in
registers; for each tile of BLOCK_T points the basis values ψ(t) [BLOCK_T, N] are computed on the
fly (never stored), the scores s = aψᵀ + log ω feed an online softmax, and Σ_j p_j ω_j ψ(t_j) is
accumulated with the usual rescaling. No [T, N] or [S, H, Q, N, T] tensor reaches memory. With
WRITE_DENSITY a second sweep writes Σ_q p(t_j) per query block, [S, H·QB, T], for the next sticky
step (the sticky samplers add groups up).

The dots use "tf32x3" (three tensor-core passes, float32 accuracy): |aᵀψ| reaches ~10², so the
plain tf32 error would move the exponent by 10⁻¹, while the FMA ("ieee") path was measured 100×
slower on the H100. The programs are split over query blocks of 16 to keep the [Q, N] tiles small.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2


@triton.jit
def _basis_tile(t_ptr, mu, inv_sigma, norm, rows, mask_t, mask_n):
    t = tl.load(t_ptr + rows, mask=mask_t, other=0.0)
    z = (t[:, None] - mu[None, :]) * inv_sigma[None, :]
    psi = tl.exp(-0.5 * z * z) * norm[None, :]
    return tl.where(mask_t[:, None] & mask_n[None, :], psi, 0.0)


@triton.jit
def _quadrature_attention_kernel(
    q_ptr, k_ptr, v_ptr, mu_ptr, sigma_ptr, t_ptr, logw_ptr, ctx_ptr, dens_ptr,
    Q, N, T, HEAD_DIM, sm_scale,
    stride_qs, stride_qq, stride_ks, stride_kn, stride_vs, stride_vn,
    stride_cs, stride_cq, stride_ds, stride_dg,
    WRITE_DENSITY: tl.constexpr, PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    qb = tl.program_id(2)
    group = h * tl.num_programs(2) + qb
    offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    mask_q = offs_q < Q
    mask_n = offs_n < N
    mask_d = offs_d < HEAD_DIM
    cols = h * HEAD_DIM + offs_d

    q = tl.load(q_ptr + s * stride_qs + offs_q[:, None] * stride_qq + cols[None, :],
                mask=mask_q[:, None] & mask_d[None, :], other=0.0).to(tl.float32) * sm_scale
    k = tl.load(k_ptr + s * stride_ks + offs_n[:, None] * stride_kn + cols[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    a = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_Q, BLOCK_N]

    sigma = tl.load(sigma_ptr + offs_n, mask=mask_n, other=1.0)
    mu = tl.load(mu_ptr + offs_n, mask=mask_n, other=0.0)
    inv_sigma = 1.0 / sigma
    norm = inv_sigma * 0.3989422804014327  # 1 / (σ √(2π))

    m_i = tl.zeros([BLOCK_Q], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + offs_t
        mask_t = rows < T
        psi = _basis_tile(t_ptr, mu, inv_sigma, norm, rows, mask_t, mask_n)
        scores = tl.dot(a, tl.trans(psi), input_precision=PRECISION)
        scores += tl.load(logw_ptr + rows, mask=mask_t, other=0.0)[None, :]
        scores = tl.where(mask_t[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, psi, input_precision=PRECISION)
        m_i = m_new

    r = acc / l_i[:, None]
    v = tl.load(v_ptr + s * stride_vs + offs_n[:, None] * stride_vn + cols[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    ctx = tl.dot(r, v, input_precision=PRECISION)
    tl.store(ctx_ptr + s * stride_cs + offs_q[:, None] * stride_cq + cols[None, :],
             ctx.to(ctx_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_d[None, :])

    if WRITE_DENSITY:
        inv_l = 1.0 / l_i
        for t0 in range(0, T, BLOCK_T):
            rows = t0 + offs_t
            mask_t = rows < T
            psi = _basis_tile(t_ptr, mu, inv_sigma, norm, rows, mask_t, mask_n)
            scores = tl.dot(a, tl.trans(psi), input_precision=PRECISION)
            p = tl.exp(scores - m_i[:, None]) * inv_l[:, None]
            p = tl.where(mask_q[:, None] & mask_t[None, :], p, 0.0)
            tl.store(dens_ptr + s * stride_ds + group * stride_dg + rows, tl.sum(p, axis=0), mask=mask_t)


# Tile shapes and dot precision; module-level so bench/tune_consolidate.py can vary them.
CONFIG = {"block_q": 16, "block_t": 16, "num_warps": 8, "precision": "tf32x3"}


_launch_quadrature_attention = CachedLaunch(_quadrature_attention_kernel)


@on_input_device
def quadrature_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                         mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, log_weight: torch.Tensor,
                         write_density: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused quadrature attention; inputs are checked by ``infvideo.ops``.

    query [S, Q, D], keys/values [S, N, D] (last strides 1), mu/sigma [N], grid/log_weight [T] (fp32).
    Returns the context [S, Q, D] and Σ_q p(t_j) per query block [S, H·QB, T] (float32; [S, H·QB, 1]
    and unwritten unless write_density).
    """
    s, q_len, model = query.shape
    n = keys.shape[1]
    t = grid.numel()
    d = model // num_heads
    block_q = CONFIG["block_q"]
    blocks = cdiv(q_len, block_q)
    ctx = torch.empty(s, q_len, model, device=query.device, dtype=query.dtype)
    density = torch.empty(s, num_heads * blocks, t if write_density else 1, device=query.device, dtype=torch.float32)
    block_n = max(16, next_power_of_2(n))
    block_t = CONFIG["block_t"]
    _launch_quadrature_attention(
        (s, num_heads, blocks),
        query, keys, values, mu, sigma, grid, log_weight, ctx, density,
        q_len, n, t, d, 1.0 / math.sqrt(d),
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
        ctx.stride(0), ctx.stride(1), density.stride(0), density.stride(1),
        # The CPU interpreter has no tensor cores to emulate: plain float32 there.
        WRITE_DENSITY=write_density, PRECISION="ieee" if query.device.type == "cpu" else CONFIG["precision"], BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=max(16, next_power_of_2(d)),
        BLOCK_T=block_t, num_warps=CONFIG["num_warps"],
    )
    return ctx, density
