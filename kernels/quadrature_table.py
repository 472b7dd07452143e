"""The quadrature attention's forward: a table of basis values, split over tiles of points.

A program per block of rows sweeping all T points with ψ evaluated in registers (the backward's
structure, ``quadrature._quadrature_rows_backward_kernel``) leaves most of the GPU idle, and both of
its products span all N basis functions although a narrow Gaussian is nil away from its centre.
Here:

- ψ(t_j) comes from a table [T, N] (float32, built once per basis and rule, about 1 MB for
  N = 256, T = 1,000: it stays in L2), its rows padded with zeros to whole tiles of points;
- each tile of BLOCK_T points needs only a band of the basis: the functions whose centre lies
  within ``CUTOFF``·σ of a point of the tile (beyond it ψ < e^{-CUTOFF²/2} of its peak:
  e^{-32} ≈ 10⁻¹⁴, below float32 rounding of the sum), a contiguous index range when the centres
  are sorted (the configurations' are), [lo, lo + BAND), lo rounded down to a multiple of 4 so
  that, for float32 inputs (``CONFIG["vector_loads_tf32x3"]``), the band loads are 16-byte vectors;
- one program per (block of rows, tiles of points) computes a tile's scores s = a·ψᵀ/√d + log ω and
  its share Σ_j e^{s_j − m} ψ(t_j) of r over the band only, with its own maximum m and sum: a
  partial [rows, tiles, BAND]; for the density it also stores the terms e^{s_j − m}/ω_j
  ([rows, T]). A second kernel rescales the partials to the row's maximum, adds them into r in
  tile order (deterministic, no atomics), writes the context r·V of its head's queries and sums
  the rescaled terms over the queries into the density Σ_q p(t_j), which needs the final
  normaliser. Storing the terms costs one write and one read of [rows, T]; recomputing the
  banded scores instead (a third kernel, earlier) cost three tensor-core passes and a launch.

Any basis and rule are exact: an unsorted basis only widens the band (up to all of N).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import CachedLaunch, cdiv, next_power_of_2

# ψ_n(t) counts where |t − μ_n| ≤ CUTOFF·σ_n.
CUTOFF = 8.0


@triton.jit
def _banded_tile(a_ptr, psi_ptr, logw_ptr, lo_ptr, rows, mask_r, tile, scale, N, T, stride_ar, stride_pt,
                 PRECISION: tl.constexpr, BLOCK_T: tl.constexpr, BAND: tl.constexpr, LO_ALIGN: tl.constexpr,
                 BAND_INSIDE: tl.constexpr):
    """(ψ [BLOCK_T, BAND], s = scale·a[:, band]·ψᵀ + log ω [rows, BLOCK_T] (−inf past the last point),
    log ω, the points and their mask) of one tile of points over its band of the basis."""
    points = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = points < T
    band = tl.multiple_of(tl.load(lo_ptr + tile), LO_ALIGN) + tl.arange(0, BAND)
    # The table has whole tiles of rows (zeros past T) and, with BAND_INSIDE, every band lies
    # within the basis: no column mask, so with aligned band starts the loads are vectors.
    if BAND_INSIDE:
        a = tl.load(a_ptr + rows[:, None] * stride_ar + band[None, :], mask=mask_r[:, None], other=0.0)
        psi = tl.load(psi_ptr + points[:, None] * stride_pt + band[None, :])
    else:
        mask_b = band < N
        a = tl.load(a_ptr + rows[:, None] * stride_ar + band[None, :], mask=mask_r[:, None] & mask_b[None, :],
                    other=0.0)
        psi = tl.load(psi_ptr + points[:, None] * stride_pt + band[None, :], mask=mask_b[None, :], other=0.0)
    logw = tl.load(logw_ptr + points, mask=mask_t, other=0.0)
    scores = tl.dot(a, tl.trans(psi), input_precision=PRECISION) * scale + logw[None, :]
    return psi, tl.where(mask_t[None, :], scores, float("-inf")), logw, points, mask_t


@triton.jit
def _tile_weights_kernel(
    a_ptr, psi_ptr, lo_ptr, logw_ptr, part_ptr, max_ptr, sum_ptr, exp_ptr,
    R, N, T, TILES, scale, stride_ar, stride_pt, stride_er,
    SCORE_PRECISION: tl.constexpr, WEIGHT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    BAND: tl.constexpr, LO_ALIGN: tl.constexpr, BAND_INSIDE: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr,
    STORE_EXP: tl.constexpr,
):
    # Several tiles per program, each with its own partial: the loop lets the next tile's loads
    # overlap this one's products (num_stages).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_r = rows < R
    first = tl.program_id(1) * TILES_PER_PROGRAM
    for tile in range(first, tl.minimum(first + TILES_PER_PROGRAM, TILES)):
        psi, scores, logw, points, mask_t = _banded_tile(a_ptr, psi_ptr, logw_ptr, lo_ptr, rows, mask_r, tile, scale,
                                                         N, T, stride_ar, stride_pt, SCORE_PRECISION, BLOCK_T, BAND,
                                                         LO_ALIGN, BAND_INSIDE)
        m = tl.max(scores, axis=1)
        p = tl.exp(scores - m[:, None])
        if STORE_EXP:
            # The density's terms up to each row's final normaliser, without the rule's weight ω_j
            # (the scores include log ω): [rows, whole tiles of points] (zeros past T), summed by
            # the combine kernel.
            tl.store(exp_ptr + rows[:, None] * stride_er + points[None, :], p * tl.exp(-logw)[None, :],
                     mask=mask_r[:, None])
        part = tl.dot(p, psi, input_precision=WEIGHT_PRECISION)
        cell = rows * TILES + tile
        tl.store(part_ptr + cell[:, None] * BAND + tl.arange(0, BAND)[None, :], part, mask=mask_r[:, None])
        tl.store(max_ptr + cell, m, mask=mask_r)
        tl.store(sum_ptr + cell, tl.sum(p, axis=1), mask=mask_r)


@triton.jit
def _row_normaliser(max_ptr, sum_ptr, rows, mask_r, TILES, BLOCK_TILES: tl.constexpr):
    """(m, 1/l) of each row from its tiles' maxima and sums: the softmax over all points."""
    tiles = tl.arange(0, BLOCK_TILES)
    cells = rows[:, None] * TILES + tiles[None, :]
    mask_c = mask_r[:, None] & (tiles < TILES)[None, :]
    tile_max = tl.load(max_ptr + cells, mask=mask_c, other=float("-inf"))
    m = tl.max(tile_max, axis=1)
    m = tl.where(mask_r, m, 0.0)  # rows past the end: no NaN from −inf − (−inf), nor 1/0 below
    total = tl.sum(tl.load(sum_ptr + cells, mask=mask_c, other=0.0) * tl.exp(tile_max - m[:, None]), axis=1)
    return m, 1.0 / tl.where(mask_r, total, 1.0)


@triton.jit
def _combine_kernel(
    lo_ptr, part_ptr, max_ptr, sum_ptr, exp_ptr, v_ptr, ctx_ptr, dens_ptr, R, N, T, TILES, H, Q, QP, DV,
    stride_vs, stride_vn, stride_cs, stride_cq, stride_dg, stride_er,
    PRECISION: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_TILES: tl.constexpr, BAND: tl.constexpr, LO_ALIGN: tl.constexpr, TILE_T: tl.constexpr,
    WRITE_DENSITY: tl.constexpr,
    DENSITY_T: tl.constexpr,
):
    # One program per GROUP rows: queries of one (stream, head), as QP is a multiple of GROUP. r
    # and the context r·V go by slices of BLOCK_N basis functions, each the sum of the tiles whose
    # band meets it, so that no [rows, N] tile and no [N, d] slice of V sit in registers at once.
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * GROUP + tl.arange(0, GROUP)
    mask_r = rows < R
    m, inv_l = _row_normaliser(max_ptr, sum_ptr, rows, mask_r, TILES, BLOCK_TILES)
    head = (pid * GROUP) // QP
    stream = head // H
    offs_d = tl.arange(0, BLOCK_D)
    cols = (head % H) * DV + offs_d
    mask_d = offs_d < DV
    context = tl.zeros([GROUP, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        r = tl.zeros([GROUP, BLOCK_N], dtype=tl.float32)
        for tile in range(0, TILES):
            lo = tl.load(lo_ptr + tile)
            if (lo < n0 + BLOCK_N) & (lo + BAND > n0):
                # The tile's partial covers basis functions [lo, lo + BAND): read it into those columns.
                col = tl.multiple_of(n0 - lo, LO_ALIGN) + tl.arange(0, BLOCK_N)
                inside = mask_n & (col >= 0) & (col < BAND)
                weight = tl.exp(tl.load(max_ptr + rows * TILES + tile, mask=mask_r, other=0.0) - m) * inv_l
                part = tl.load(part_ptr + (rows * TILES + tile)[:, None] * BAND + col[None, :],
                               mask=mask_r[:, None] & inside[None, :], other=0.0)
                r += part * weight[:, None]
        v = tl.load(v_ptr + stream * stride_vs + offs_n[:, None] * stride_vn + cols[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        context = tl.dot(r, v, context, input_precision=PRECISION)
    queries = rows % QP
    real = mask_r & (queries < Q)  # padding queries add nothing
    tl.store(ctx_ptr + stream * stride_cs + queries[:, None] * stride_cq + cols[None, :],
             context.to(ctx_ptr.dtype.element_ty), mask=real[:, None] & mask_d[None, :])
    if WRITE_DENSITY:
        # Σ_q p_q(t_j) of the group: each stored term rescaled from its tile's maximum to the row's
        # softmax, the tiles' exponentials read once (no scores recomputed).
        for t0 in range(0, T, DENSITY_T):
            points = t0 + tl.arange(0, DENSITY_T)
            inside = (points < T)[None, :]
            tile_max = tl.load(max_ptr + rows[:, None] * TILES + (points // TILE_T)[None, :],
                               mask=real[:, None] & inside, other=float("-inf"))
            # Rows of terms span whole slices of points, zeros past T (a mask of rows only: vector
            # loads); past T the tile maxima are −inf, so those terms add nothing.
            terms = tl.load(exp_ptr + rows[:, None] * stride_er + points[None, :], mask=real[:, None], other=0.0)
            p = terms * tl.exp(tile_max - m[:, None]) * inv_l[:, None]
            tl.store(dens_ptr + pid * stride_dg + points, tl.sum(p, axis=0), mask=points < T)


_launch_tile_weights = CachedLaunch(_tile_weights_kernel)
_launch_combine = CachedLaunch(_combine_kernel)

# Tiles, module-level so a sweep can vary them (bench/tune_quadrature.py): points per tile; rows
# per program (a multiple of the density's 16-query groups), tiles per program, warps and
# pipeline stages of the tiles' kernel; warps of the sum of the partials (16 rows, one head's, per
# program), the basis functions of its slices and the points of its density's slices. Keys ending
# in _tf32x3 hold when the products with ψ and V take three TF32 passes (float32 inputs), the
# others for one pass (16-bit inputs) and in the interpreter. ``vector_loads``: the band loads
# without a column mask and with the band starts' alignment hint (16-byte vectors where the
# bands allow): measured faster with float32 inputs, slower with bfloat16 ones
# (``results/h200_quadrature_forms.txt``).
CONFIG = {"block_t": 64, "block_m": 64, "tiles_per_program": 2, "num_warps": 4, "num_stages": 1,
          "num_stages_tf32x3": 2, "combine_n": 128, "combine_n_tf32x3": 64, "combine_warps": 4, "density_t": 256,
          "vector_loads": False, "vector_loads_tf32x3": True}

# (mu, sigma, grid, block_t) by storage and version -> (mu, sigma, grid, table, band starts, band
# width, the starts' alignment).
_TABLES: dict = {}
MAX_TABLES = 16


# Band starts are rounded down to a multiple of this many basis functions: the kernels' band
# loads are then 16-byte vectors.
LO_ALIGN = 4


def _alignment(last: int) -> int:
    """What every band start (rounded down to LO_ALIGN, or clamped to ``last``) is a multiple
    of: the kernels' alignment hint."""
    return LO_ALIGN if last % LO_ALIGN == 0 else 1


def basis_table(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, block_t: int):
    """(ψ(t_j) [whole tiles of points, N] float32 (zeros past T), first basis of each tile's band
    [⌈T/block_t⌉] int32, band width, what every band start is a multiple of).

    Built once per basis and rule (cached by the tensors' storage and version counters). Building
    one reads the band width back from the device, which a CUDA graph capture cannot do: a table
    first asked for there takes the whole basis as its band (exact, not banded)."""
    key = tuple((x.data_ptr(), x._version, x.device, x.numel()) for x in (mu, sigma, grid)) + (block_t,)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit[3:]
    t, n = grid.numel(), mu.numel()
    # In float64: the float32 table then carries one rounding, as the reference's basis values do
    # (float32 arithmetic would add ~z²·2⁻²⁴ relative at z = (t − μ)/σ, 4·10⁻⁶ at the cut-off).
    z = (grid.double()[:, None] - mu.double()[None, :]) / sigma.double()[None, :]
    table = (torch.exp(-0.5 * z * z) / (sigma.double()[None, :] * 2.5066282746310002)).to(torch.float32)
    tiles = cdiv(t, block_t)
    # Whole tiles of rows (zeros past T): the kernels read a tile's rows without a mask.
    table = torch.nn.functional.pad(table, (0, 0, 0, tiles * block_t - t)).contiguous()
    full = max(16, next_power_of_2(n))
    if grid.is_cuda and torch.cuda.is_current_stream_capturing():
        return table, torch.zeros(tiles, device=grid.device, dtype=torch.int32), full, _alignment(0)
    padded = torch.cat([grid, grid[-1:].expand(tiles * block_t - t)]).view(tiles, block_t)
    reach = CUTOFF * sigma
    active = (mu[None, :] + reach[None, :] >= padded.amin(1)[:, None]) & \
             (mu[None, :] - reach[None, :] <= padded.amax(1)[:, None])
    index = torch.arange(n, device=mu.device)
    lo = torch.where(active, index, n).amin(1).clamp_max(n - 1)
    hi = torch.where(active, index + 1, 0).amax(1)
    # Band starts on multiples of LO_ALIGN (16-byte rows of float32) where the basis allows.
    lo = lo - lo % LO_ALIGN
    band = min(max(16, next_power_of_2(int((hi - lo).clamp_min(1).max()))), full)
    # A band that would run past the basis starts earlier instead: each tile's columns stay inside [0, N).
    last = max(0, n - band)
    lo = lo.clamp(max=last)
    built = (table, lo.to(torch.int32).contiguous(), band, _alignment(last))
    if len(_TABLES) >= MAX_TABLES:
        _TABLES.clear()
    # The entry holds mu, sigma and grid: while it lives, no other tensor can take their storage,
    # so a key's pointers name these tensors only.
    _TABLES[key] = (mu, sigma, grid, *built)
    return built


def table_attention(a, scale, values, mu, sigma, grid, log_weight, context, density, num_heads, q_len, padded,
                    write_density, precision, weight_precision, group):
    """The context [S, Q, D] (written into ``context``) and the density of the scores scale·a, a
    [S, H, QP, N]: the tiles' partials, then their sum times V.

    ``precision`` is the score product's (exponentiated: float32 accuracy needed); ``weight_precision``
    that of the products with ψ and V, whose error reaches the context linearly."""
    rows, n = a.shape[0] * a.shape[1] * a.shape[2], a.shape[3]
    t = grid.numel()
    block_t = CONFIG["block_t"]
    table, lo, band, align = basis_table(mu, sigma, grid, block_t)
    split = "_tf32x3" if weight_precision == "tf32x3" else ""
    vectors = CONFIG["vector_loads" + split]
    align = align if vectors else 1
    tiles = cdiv(t, block_t)
    block_m = max(group, CONFIG["block_m"])
    part = torch.empty(rows, tiles, band, device=a.device, dtype=torch.float32)
    tile_max = torch.empty(rows, tiles, device=a.device, dtype=torch.float32)
    tile_sum = torch.empty_like(tile_max)
    # The tiles' exponentials, for the density (float32 [rows, T rounded up to whole tiles and
    # whole slices of the combine's density]; a placeholder without it).
    density_t = min(CONFIG["density_t"], max(16, next_power_of_2(t)))
    terms_width = cdiv(t, max(block_t, density_t)) * max(block_t, density_t) if write_density else 1
    # The tile kernel writes the first tiles·block_t columns (zeros past T); any further ones are zeroed here.
    terms = (torch.empty if terms_width <= tiles * block_t else torch.zeros)(rows, terms_width, device=a.device,
                                                                               dtype=torch.float32)
    per_program = CONFIG["tiles_per_program"]
    _launch_tile_weights((cdiv(rows, block_m), cdiv(tiles, per_program)),
                         a, table, lo, log_weight, part, tile_max, tile_sum, terms,
                         rows, n, t, tiles, scale, a.stride(2), table.stride(0), terms.stride(0),
                         SCORE_PRECISION=precision, WEIGHT_PRECISION=weight_precision, BLOCK_M=block_m,
                         BLOCK_T=block_t, BAND=band, LO_ALIGN=align, BAND_INSIDE=band <= n and vectors,
                         TILES_PER_PROGRAM=per_program, STORE_EXP=write_density,
                         num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages" + split])
    head_dim = values.shape[-1] // num_heads
    _launch_combine((cdiv(rows, group),),
                    lo, part, tile_max, tile_sum, terms, values, context, density, rows, n, t, tiles, num_heads,
                    q_len, padded, head_dim, values.stride(0), values.stride(1), context.stride(0), context.stride(1),
                    density.stride(1), terms.stride(0), PRECISION=weight_precision, GROUP=group,
                    BLOCK_N=max(16, min(CONFIG["combine_n" + split], next_power_of_2(n))),
                    BLOCK_D=max(16, next_power_of_2(head_dim)), BLOCK_TILES=max(2, next_power_of_2(tiles)), BAND=band,
                    LO_ALIGN=align, TILE_T=block_t, WRITE_DENSITY=write_density, DENSITY_T=density_t,
                    num_warps=CONFIG["combine_warps"])
