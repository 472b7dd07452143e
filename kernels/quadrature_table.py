"""The quadrature attention's rows from a table of basis values, with banded score products.

The ψ-on-the-fly kernel (``quadrature._quadrature_rows_kernel``) evaluates [BLOCK_T, N] Gaussians
per tile of points in registers and feeds them to two tensor-core products as operands, which
takes a trip through shared memory each time, and it multiplies every row of scores by all N basis
values although a narrow Gaussian is nil away from its centre. This variant:

- reads ψ(t_j) from a table [T, N] (float32, built once per basis and rule, about 1 MB for
  N = 256, T = 1,000: it stays in L2), loaded straight into the products' operand layout;
- takes the score product s = aψᵀ over a band of the basis only: for each tile of points the
  basis functions whose centre lies within ``CUTOFF``·σ of a point of the tile (beyond it
  ψ < e^{-CUTOFF²/2} of its peak: e^{-32} ≈ 10⁻¹⁴, below float32 rounding of the sum), a contiguous
  index range when the centres are sorted (the configurations' are), [lo, lo + BAND);
- keeps the running Σ_j p_j ω_j ψ(t_j) over all N (the dense product with the table tile), so
  that r needs no scatter, and with WRITE_DENSITY sweeps the points again for Σ_q p(t_j).

Any basis and rule are exact: an unsorted basis only widens the band (up to all of N).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import CachedLaunch, cdiv, next_power_of_2
from ._online_softmax import accumulate, store_group_density

# ψ_n(t) counts where |t − μ_n| ≤ CUTOFF·σ_n.
CUTOFF = 8.0


@triton.jit
def _banded_scores(a_ptr, psi_ptr, logw_ptr, lo_ptr, rows, mask_r, tile, points, mask_t, N, stride_ar, stride_pt,
                   PRECISION: tl.constexpr, BAND: tl.constexpr):
    """s = a[:, band]·ψ(t)[band] + log ω of one tile of points, −inf past the last point."""
    band = tl.load(lo_ptr + tile) + tl.arange(0, BAND)
    mask_b = band < N
    a = tl.load(a_ptr + rows[:, None] * stride_ar + band[None, :], mask=mask_r[:, None] & mask_b[None, :], other=0.0)
    psi = tl.load(psi_ptr + points[:, None] * stride_pt + band[None, :], mask=mask_t[:, None] & mask_b[None, :],
                  other=0.0)
    scores = tl.dot(a, tl.trans(psi), input_precision=PRECISION)
    scores += tl.load(logw_ptr + points, mask=mask_t, other=0.0)[None, :]
    return tl.where(mask_t[None, :], scores, float("-inf"))


@triton.jit
def _table_rows_kernel(
    a_ptr, psi_ptr, lo_ptr, logw_ptr, r_ptr, dens_ptr,
    R, N, T, Q, QP, stride_ar, stride_pt, stride_rr, stride_dg,
    WRITE_DENSITY: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BAND: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_r = rows < R
    mask_n = offs_n < N

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        points = t0 + offs_t
        mask_t = points < T
        scores = _banded_scores(a_ptr, psi_ptr, logw_ptr, lo_ptr, rows, mask_r, t0 // BLOCK_T, points, mask_t, N,
                                stride_ar, stride_pt, PRECISION, BAND)
        psi = tl.load(psi_ptr + points[:, None] * stride_pt + offs_n[None, :], mask=mask_t[:, None] & mask_n[None, :],
                      other=0.0)
        m_i, l_i, acc = accumulate(scores, psi, m_i, l_i, acc, PRECISION)

    tl.store(r_ptr + rows[:, None] * stride_rr + offs_n[None, :], acc / l_i[:, None],
             mask=mask_r[:, None] & mask_n[None, :])

    if WRITE_DENSITY:
        inv_l = 1.0 / l_i
        real = mask_r & (rows % QP < Q)  # padding queries add nothing
        for t0 in range(0, T, BLOCK_T):
            points = t0 + offs_t
            mask_t = points < T
            scores = _banded_scores(a_ptr, psi_ptr, logw_ptr, lo_ptr, rows, mask_r, t0 // BLOCK_T, points, mask_t, N,
                                    stride_ar, stride_pt, PRECISION, BAND)
            # The density is p(t_j) without the rule's weight ω_j, which the scores include.
            logw = tl.load(logw_ptr + points, mask=mask_t, other=0.0)
            p = tl.exp(scores - logw[None, :] - m_i[:, None]) * inv_l[:, None]
            store_group_density(dens_ptr, p, real, points, mask_t, pid, R, stride_dg, GROUP, BLOCK_M, BLOCK_T)


_launch_table_rows = CachedLaunch(_table_rows_kernel)

# Tiles of the table kernel: rows of scores per program (a multiple of the density's 16-query
# groups), points per tile, warps; module-level so a tile sweep can vary them.
CONFIG = {"block_m": 64, "block_t": 32, "num_warps": 8}

# (mu, sigma, grid, block_t) by storage and version -> (table, band starts, band width).
_TABLES: dict = {}
MAX_TABLES = 16


def basis_table(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, block_t: int):
    """(ψ(t_j) [T, N] float32, first basis of each tile's band [⌈T/block_t⌉] int32, band width).

    Built once per basis and rule (cached by the tensors' storage and version counters). Building
    one reads the band width back from the device, which a CUDA graph capture cannot do: a table
    first asked for there takes the whole basis as its band (exact, not banded)."""
    key = tuple((x.data_ptr(), x._version, x.device, x.numel()) for x in (mu, sigma, grid)) + (block_t,)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit[3:]
    t, n = grid.numel(), mu.numel()
    z = (grid[:, None] - mu[None, :]) / sigma[None, :]
    table = (torch.exp(-0.5 * z * z) / (sigma[None, :] * 2.5066282746310002)).to(torch.float32).contiguous()
    tiles = cdiv(t, block_t)
    if grid.is_cuda and torch.cuda.is_current_stream_capturing():
        return table, torch.zeros(tiles, device=grid.device, dtype=torch.int32), max(16, next_power_of_2(n))
    padded = torch.cat([grid, grid[-1:].expand(tiles * block_t - t)]).view(tiles, block_t)
    reach = CUTOFF * sigma
    active = (mu[None, :] + reach[None, :] >= padded.amin(1)[:, None]) & \
             (mu[None, :] - reach[None, :] <= padded.amax(1)[:, None])
    index = torch.arange(n, device=mu.device)
    lo = torch.where(active, index, n).amin(1).clamp_max(n - 1)
    hi = torch.where(active, index + 1, 0).amax(1)
    width = max(1, int((hi - lo).clamp_min(1).max()))
    built = (table, lo.to(torch.int32).contiguous(), min(max(16, next_power_of_2(width)), max(16, next_power_of_2(n))))
    if len(_TABLES) >= MAX_TABLES:
        _TABLES.clear()
    # The entry holds mu, sigma and grid: while it lives, no other tensor can take their storage,
    # so a key's pointers name these tensors only.
    _TABLES[key] = (mu, sigma, grid, *built)
    return built


def table_rows(a, mu, sigma, grid, log_weight, r, density, q_len, padded, write_density, precision, group):
    """r [rows, N] (and the density) of the scores a [rows, N] through the table kernel."""
    rows, n = a.shape[0] * a.shape[1] * a.shape[2], a.shape[3]
    t = grid.numel()
    block_t = CONFIG["block_t"]
    table, lo, band = basis_table(mu, sigma, grid, block_t)
    block_n = max(16, next_power_of_2(n))
    block_m = max(group, CONFIG["block_m"])
    _launch_table_rows((cdiv(rows, block_m),),
                       a, table, lo, log_weight, r, density,
                       rows, n, t, q_len, padded, a.stride(2), table.stride(0), r.stride(2), density.stride(1),
                       WRITE_DENSITY=write_density, PRECISION=precision, GROUP=group, BLOCK_M=block_m,
                       BLOCK_N=block_n, BLOCK_T=block_t, BAND=band, num_warps=CONFIG["num_warps"])
