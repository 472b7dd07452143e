"""Continuous attention for smooth (Gaussian) bases by quadrature, fused.

The score s(t) = aᵀψ(t) has no closed-form normaliser, so Z = ∫ exp s and r_n = ∫ p ψ_n are taken
with a quadrature rule on T nodes given as nodes and log-weights (the configuration's:
Gauss–Legendre panels in the exact preset, the trapezoid in the paper one; any order of nodes).
The slot scores a = q·Kᵀ [S, H, Q, N] come from one three-TF32 batched product reading the heads
in place (``products.head_products``); every (stream, head, query) is then one row of scores, and
the kernels of ``quadrature_table`` take the softmax over the nodes by tiles of points with banded
products, sum r and write the context r·V, and the density Σ_q p(t_j) per block of 16 queries of
one head, [S, H·QB, T], for the next sticky step (queries padded to a multiple of 16 so no block
spans two heads). No [T, N] basis beyond one cached table, and no [S, H, Q, T] tensor, reaches
memory. The score dots use "tf32x3" (three tensor-core passes, float32 accuracy): |aᵀψ| reaches
~10², so the plain tf32 error would move the exponent by 10⁻¹.

The backward (``quadrature_attention_backward``) has its own structure: batched products give a
and dr = dc·Vᵀ, one kernel sweeps the points twice per block of rows (the normaliser, then the
score gradient ∂a and r with ψ evaluated on the fly in registers), and products of ∂a and r give
dq, dK, dV.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._online_softmax import running_max_sum
from .products import head_products
from .quadrature_table import table_attention


@triton.jit
def _basis_params(mu_ptr, sigma_ptr, offs_n, mask_n):
    """(μ, 1/σ, 1/(σ√(2π))) of the basis functions offs_n."""
    sigma = tl.load(sigma_ptr + offs_n, mask=mask_n, other=1.0)
    mu = tl.load(mu_ptr + offs_n, mask=mask_n, other=0.0)
    inv_sigma = 1.0 / sigma
    return mu, inv_sigma, inv_sigma * 0.3989422804014327


@triton.jit
def _tile_scores(a, t_ptr, logw_ptr, mu, inv_sigma, norm, points, mask_t, mask_n, PRECISION: tl.constexpr):
    """(ψ [BLOCK_T, N], s = aψᵀ + log ω [rows, BLOCK_T], −inf past the last point) of one tile of points."""
    psi = _basis_tile(t_ptr, mu, inv_sigma, norm, points, mask_t, mask_n)
    scores = tl.dot(a, tl.trans(psi), input_precision=PRECISION)
    scores += tl.load(logw_ptr + points, mask=mask_t, other=0.0)[None, :]
    return psi, tl.where(mask_t[None, :], scores, float("-inf"))


@triton.jit
def _basis_tile(t_ptr, mu, inv_sigma, norm, rows, mask_t, mask_n):
    t = tl.load(t_ptr + rows, mask=mask_t, other=0.0)
    z = (t[:, None] - mu[None, :]) * inv_sigma[None, :]
    psi = tl.exp(-0.5 * z * z) * norm[None, :]
    return tl.where(mask_t[:, None] & mask_n[None, :], psi, 0.0)


# The density is summed over groups of this many queries per head: the op's output shape
# (infvideo.ops: G = H·⌈Q/16⌉), not a tile to tune.
QUERY_GROUP = 16
# The backward kernel's tiles and the dot precision of both directions; module-level so a sweep
# can vary them (block_m, the rows of a program, is a multiple of QUERY_GROUP).
CONFIG = {"block_m": 16, "block_t": 32, "num_warps": 4, "precision": "tf32x3"}


def _layout(query: torch.Tensor, keys: torch.Tensor, num_heads: int):
    """(S, Q, N, head width d, Q padded to whole query groups, the dots' precision) of a call."""
    s, q_len, model = query.shape
    # The CPU interpreter has no tensor cores to emulate: plain float32 there.
    precision = "ieee" if query.device.type == "cpu" else CONFIG["precision"]
    return s, q_len, keys.shape[1], model // num_heads, cdiv(q_len, QUERY_GROUP) * QUERY_GROUP, precision

@on_input_device
def quadrature_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                         mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, log_weight: torch.Tensor,
                         write_density: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused quadrature attention; inputs are checked by ``infvideo.ops``.

    query [S, Q, D], keys/values [S, N, D] (last strides 1), mu/sigma [N] and grid [T] (any float
    dtype: the basis table is built from them in float64), log_weight [T] (float32).
    Returns the context [S, Q, D] and Σ_q p(t_j) per head and block of 16 queries [S, H·QB, T]
    (float32; [S, H·QB, 1] zeros unless write_density).
    """
    s, q_len, n, d, padded, precision = _layout(query, keys, num_heads)
    t = grid.numel()
    group = QUERY_GROUP
    # Padding queries get zero scores: finite, and left out of the density and the context.
    a = (torch.empty if padded == q_len else torch.zeros)(s, num_heads, padded, n, device=query.device,
                                                           dtype=torch.float32)
    head_products(query, (query.stride(0), d * query.stride(2), query.stride(1), query.stride(2)),
                  keys, (keys.stride(0), d * keys.stride(2), keys.stride(2), keys.stride(1)),
                  a, a.stride(), q_len, n, d, num_heads, s, precision)
    groups = num_heads * padded // group
    density = (torch.empty(s, groups, t, device=query.device, dtype=torch.float32) if write_density
               else torch.zeros(s, groups, 1, device=query.device, dtype=torch.float32))  # a defined placeholder
    # The products with ψ and V reach the context linearly: single tf32 (10-bit mantissa) is well
    # below a bfloat16 output's rounding (7 bits), not below float16's.
    weight_precision = "tf32" if precision == "tf32x3" and query.dtype == torch.bfloat16 else precision
    context = torch.empty(s, q_len, values.shape[-1], device=query.device, dtype=query.dtype)
    table_attention(a, 1.0 / math.sqrt(d), values, mu, sigma, grid, log_weight, context, density, num_heads, q_len,
                    padded, write_density, precision, weight_precision, group)
    return context, density


@triton.jit
def _quadrature_rows_backward_kernel(
    a_ptr, dr_ptr, gdens_ptr, mu_ptr, sigma_ptr, t_ptr, logw_ptr, da_ptr, r_ptr,
    R, N, T, Q, QP, stride_ar, stride_dg,
    HAS_GDENS: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # With w_j = p(t_j) ω_j the quadrature's softmax weights, r = Σ_j w_j ψ_j and the density
    # output p_j = w_j / ω_j, the upstream gradients dr [N] and dp_j give
    # e_j = w_j (dr·ψ_j) + p_j dp_j and ∂a = Σ_j e_j ψ_j − (Σ_j e_j) r: after the pass that finds
    # the normaliser, one more sweep accumulates Σ e ψ, Σ e and r itself (which the caller needs
    # for dV), ψ again evaluated on the fly.
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_r = rows < R
    mask_n = offs_n < N
    tile = mask_r[:, None] & mask_n[None, :]
    a = tl.load(a_ptr + rows[:, None] * stride_ar + offs_n[None, :], mask=tile, other=0.0)
    dr = tl.load(dr_ptr + rows[:, None] * stride_ar + offs_n[None, :], mask=tile, other=0.0)

    mu, inv_sigma, norm = _basis_params(mu_ptr, sigma_ptr, offs_n, mask_n)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        points = t0 + offs_t
        mask_t = points < T
        psi, scores = _tile_scores(a, t_ptr, logw_ptr, mu, inv_sigma, norm, points, mask_t, mask_n, PRECISION)
        m_i, l_i = running_max_sum(scores, mask_t, m_i, l_i)
    inv_l = 1.0 / l_i

    real = mask_r & (rows % QP < Q)  # padding queries add nothing to the density
    acc_e = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_eps = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_r = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        points = t0 + offs_t
        mask_t = points < T
        psi = _basis_tile(t_ptr, mu, inv_sigma, norm, points, mask_t, mask_n)
        s = tl.dot(a, tl.trans(psi), input_precision=PRECISION)
        p = tl.where(mask_t[None, :], tl.exp(s - m_i[:, None]) * inv_l[:, None], 0.0)
        w = p * tl.exp(tl.load(logw_ptr + points, mask=mask_t, other=0.0))[None, :]
        e = w * tl.dot(dr, tl.trans(psi), input_precision=PRECISION)
        if HAS_GDENS:
            groups = rows // GROUP
            dp = tl.load(gdens_ptr + groups[:, None] * stride_dg + points[None, :],
                         mask=real[:, None] & mask_t[None, :], other=0.0)
            e += p * dp
        acc_e += tl.sum(e, axis=1)
        acc_eps += tl.dot(e, psi, input_precision=PRECISION)
        acc_r += tl.dot(w, psi, input_precision=PRECISION)

    tl.store(da_ptr + rows[:, None] * stride_ar + offs_n[None, :], acc_eps - acc_e[:, None] * acc_r, mask=tile)
    tl.store(r_ptr + rows[:, None] * stride_ar + offs_n[None, :], acc_r, mask=tile)


_launch_quadrature_rows_backward = CachedLaunch(_quadrature_rows_backward_kernel)


@on_input_device
def quadrature_attention_backward(grad_context: torch.Tensor, grad_density: torch.Tensor | None,
                                  query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int,
                                  mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, log_weight: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the quadrature attention's backward; arguments come from the op's autograd.

    grad_context [S, Q, D], grad_density [S, H·QB, T] or None, and the forward's inputs. Returns
    dq, dK, dV in the dtypes of query, keys and values. As in the forward, the score product
    a = q·Kᵀ/√d and the products with V and of ∂a run as batched matmuls around one kernel (the
    gradient of the scores, ∂a, and the weights r, [S, H, Q, N] each).
    """
    s, q_len, n, d, padded, precision = _layout(query, keys, num_heads)
    t = grid.numel()
    group = QUERY_GROUP
    scale = 1.0 / math.sqrt(d)
    qh = query.reshape(s, q_len, num_heads, d).transpose(1, 2).to(torch.float32)
    kh = keys.reshape(s, n, num_heads, d).transpose(1, 2).to(torch.float32)
    vh = values.reshape(s, n, num_heads, values.shape[-1] // num_heads).transpose(1, 2).to(torch.float32)
    go = grad_context.reshape(s, q_len, num_heads, -1).transpose(1, 2).to(torch.float32)  # [S, H, Q, d_v]
    a = torch.matmul(qh * scale, kh.transpose(-1, -2))  # [S, H, Q, N]
    dr = torch.matmul(go, vh.transpose(-1, -2))
    if padded != q_len:
        a = torch.nn.functional.pad(a, (0, 0, 0, padded - q_len))
        dr = torch.nn.functional.pad(dr, (0, 0, 0, padded - q_len))
    a, dr = a.contiguous(), dr.contiguous()
    rows = s * num_heads * padded
    da = torch.empty_like(a)
    r = torch.empty_like(a)
    gdens = grad_density.float().contiguous() if grad_density is not None else a
    mu, sigma, grid = (x.to(torch.float32) for x in (mu, sigma, grid))  # ψ evaluated in float32 registers
    block_n = max(16, next_power_of_2(n))
    # Three [BLOCK_M, N] accumulators (the forward holds one): half its rows for wide N.
    block_m = max(group, min(CONFIG["block_m"], 4096 // block_n))
    _launch_quadrature_rows_backward((cdiv(rows, block_m),),
        a, dr, gdens, mu, sigma, grid, log_weight, da, r,
        rows, n, t, q_len, padded, a.stride(2), gdens.stride(1) if grad_density is not None else 0,
        HAS_GDENS=grad_density is not None,
        PRECISION=precision,
        GROUP=group, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_T=CONFIG["block_t"], num_warps=CONFIG["num_warps"],
    )
    da, r = da[:, :, :q_len], r[:, :, :q_len]
    dq = torch.matmul(da, kh) * scale
    dk = torch.matmul(da.transpose(-1, -2), qh) * scale
    dv = torch.matmul(r.transpose(-1, -2), go)

    def merge(x, like):
        return x.transpose(1, 2).reshape(like.shape).to(like.dtype)

    return merge(dq, query), merge(dk, keys), merge(dv, values)
