"""Tables of Gaussian basis values on a quadrature rule's nodes, with each tile's band of the basis.

Plain torch, shared by the quadrature attention's kernels: Triton's (``quadrature_table``) and the
CUDA one (``csrc/attention/quadrature_table_attention_cuda.cu``). ψ(t_j) is a float32 table
[whole tiles of points, columns] built once per basis and rule from float64 nodes, rows past T
zero. Each tile of points needs only a band of the basis: the functions whose centre lies within
``CUTOFF``·σ of a point of the tile (beyond it ψ < e^{-CUTOFF²/2} of its peak: e^{-32} ≈ 10⁻¹⁴,
below float32 rounding of the sum), a contiguous index range when the centres are sorted (the
configurations' are). An unsorted basis only widens the bands (up to all of N): exact either way.
"""
from __future__ import annotations

import torch

# ψ_n(t) counts where |t − μ_n| ≤ CUTOFF·σ_n.
CUTOFF = 8.0

# Band starts of Triton's table are rounded down to a multiple of this many basis functions: the
# kernels' band loads are then 16-byte vectors.
LO_ALIGN = 4

# The CUDA kernel's band starts are multiples of 8 (32-byte fragment loads), its bands whole
# chunks of this many basis functions.
CHUNK = 64
CHUNK_ALIGN = 8

# (kind, mu, sigma, grid, tile) by storage and version -> (mu, sigma, grid, *the table's tuple).
_TABLES: dict = {}
MAX_TABLES = 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cached(kind: str, mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, tile: int, build):
    key = (kind, tile) + tuple((x.data_ptr(), x._version, x.device, x.numel()) for x in (mu, sigma, grid))
    hit = _TABLES.get(key)
    if hit is not None:
        return hit[3:]
    built = build()
    if built[-1] is None:  # not to be cached (see capturing)
        return built[:-1]
    if len(_TABLES) >= MAX_TABLES:
        _TABLES.clear()
    # The entry holds mu, sigma and grid: while it lives, no other tensor can take their storage,
    # so a key's pointers name these tensors only.
    _TABLES[key] = (mu, sigma, grid, *built[:-1])
    return built[:-1]


def _values(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """ψ(t_j) [rows, columns] float32, zeros past T and past N."""
    # In float64: the float32 table then carries one rounding, as the reference's basis values do
    # (float32 arithmetic would add ~z²·2⁻²⁴ relative at z = (t − μ)/σ, 4·10⁻⁶ at the cut-off).
    z = (grid.double()[:, None] - mu.double()[None, :]) / sigma.double()[None, :]
    table = (torch.exp(-0.5 * z * z) / (sigma.double()[None, :] * 2.5066282746310002)).to(torch.float32)
    return torch.nn.functional.pad(table, (0, columns - mu.numel(), 0, rows - grid.numel())).contiguous()


def _capturing(grid: torch.Tensor) -> bool:
    """A CUDA graph is being captured: the band widths cannot be read back from the device."""
    return grid.is_cuda and torch.cuda.is_current_stream_capturing()


def _band_edges(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, one past the last) basis function of each tile's band, [⌈T/tile⌉] each."""
    t, n = grid.numel(), mu.numel()
    tiles = _cdiv(t, tile)
    padded = torch.cat([grid, grid[-1:].expand(tiles * tile - t)]).view(tiles, tile)
    reach = CUTOFF * sigma
    active = (mu[None, :] + reach[None, :] >= padded.amin(1)[:, None]) & \
             (mu[None, :] - reach[None, :] <= padded.amax(1)[:, None])
    index = torch.arange(n, device=mu.device)
    lo = torch.where(active, index, n).amin(1).clamp_max(n - 1)
    hi = torch.where(active, index + 1, 0).amax(1)
    return lo, hi


def _alignment(last: int) -> int:
    """What every band start (rounded down to LO_ALIGN, or clamped to ``last``) is a multiple
    of: the kernels' alignment hint."""
    return LO_ALIGN if last % LO_ALIGN == 0 else 1


def basis_table(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor, block_t: int):
    """Triton's table: (ψ(t_j) [whole tiles of points, N] float32 (zeros past T), first basis of
    each tile's band [⌈T/block_t⌉] int32, band width (a power of two), what every band start is a
    multiple of).

    Built once per basis and rule (cached by the tensors' storage and version counters). Building
    one reads the band width back from the device, which a CUDA graph capture cannot do: a table
    first asked for there takes the whole basis as its band (exact, not banded)."""
    def build():
        t, n = grid.numel(), mu.numel()
        tiles = _cdiv(t, block_t)
        table = _values(mu, sigma, grid, tiles * block_t, n)
        full = max(16, _next_power_of_2(n))
        if _capturing(grid):
            return table, torch.zeros(tiles, device=grid.device, dtype=torch.int32), full, _alignment(0), None
        lo, hi = _band_edges(mu, sigma, grid, block_t)
        # Band starts on multiples of LO_ALIGN (16-byte rows of float32) where the basis allows.
        lo = lo - lo % LO_ALIGN
        band = min(max(16, _next_power_of_2(int((hi - lo).clamp_min(1).max()))), full)
        # A band that would run past the basis starts earlier instead: each tile's columns stay inside [0, N).
        last = max(0, n - band)
        lo = lo.clamp(max=last)
        return table, lo.to(torch.int32).contiguous(), band, _alignment(last), True
    return _cached("triton", mu, sigma, grid, block_t, build)


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to TF32 (10 mantissa bits), to nearest, ties away from zero: what
    the tensor cores' cvt.rna.tf32.f32 gives (finite inputs)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


def tf32_parts(x: torch.Tensor) -> torch.Tensor:
    """[2, *x.shape]: the TF32 high part of float32 ``x`` and the TF32 rounding of the rest, whose
    sum is within 2⁻²² of x (relative): the operand split of a three-pass TF32 product."""
    high = tf32_round(x)
    return torch.stack([high, tf32_round(x - high)])


def chunked_basis_table(mu: torch.Tensor, sigma: torch.Tensor, grid: torch.Tensor):
    """The CUDA kernel's table: (ψ(t_j) as TF32 high and low parts (:func:`tf32_parts`),
    [2, whole tiles of CHUNK points, width] float32 (zeros past T and past N), first basis of
    each tile's band [tiles] int32 (multiples of CHUNK_ALIGN), the band's number of CHUNK-wide
    chunks), where every band start + chunks·CHUNK ≤ width, a multiple of CHUNK_ALIGN of at least
    N rounded up to CHUNK. Cached and captured as :func:`basis_table`."""
    def build():
        t, n = grid.numel(), mu.numel()
        tiles = _cdiv(t, CHUNK)
        whole = _cdiv(n, CHUNK) * CHUNK
        if _capturing(grid):
            return (tf32_parts(_values(mu, sigma, grid, tiles * CHUNK, whole)),
                    torch.zeros(tiles, device=grid.device, dtype=torch.int32), whole // CHUNK, None)
        lo, hi = _band_edges(mu, sigma, grid, CHUNK)
        lo = lo - lo % CHUNK_ALIGN
        chunks = _cdiv(int((hi - lo).clamp_min(1).max()), CHUNK)
        # Bands that would run past N rounded up start earlier instead (still covering theirs), so
        # that the table, and the kernel's rows of a and r, stay that wide.
        lo = lo.clamp(max=max(0, whole - chunks * CHUNK))
        width = max(whole, int(lo.max()) + chunks * CHUNK)
        return (tf32_parts(_values(mu, sigma, grid, tiles * CHUNK, width)), lo.to(torch.int32).contiguous(), chunks,
                True)
    return _cached("cuda", mu, sigma, grid, CHUNK, build)
