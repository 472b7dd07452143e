"""Float32 matrix products on tensor cores: three TF32 dots per product, float32 accuracy.

Used where a float32 product would otherwise run without tensor cores: the K/V projection of the
step with float32 projections (:func:`linear`, whose kernel reads the weight's TF32 parts from
memory, :func:`tf32_parts`, and splits only x in registers; :func:`split_dot` is its three
products, which the slot attention's and the folded attention's float32 dots share); per-head
and per-stream products read in place (:func:`head_products`): the folded attention's, the
quadrature attention's scores, the Gaussian step's map from its old coefficients.
``PRECISION = "tf32x3"`` (Triton's tl.dot ``input_precision``) splits each operand into its TF32
part and the remainder and adds the three products that matter (big·big, big·small, small·big):
the result is as accurate as a float32 product (errors near 1e-7 relative against float64) where
a single TF32 product is off by about 1e-3. The CPU interpreter computes its dots exactly in
float32 and is told ``"ieee"``.

Triton's tf32x3 splits both operands on every tile, and a tile the tensor cores read from shared
memory then makes a round trip through registers. A TF32 product truncates its float32 operands
(measured on an H200), so such a tile can go to :func:`split_dot` as its own high part, with its
low part x − :func:`tf32_truncated`(x) read from memory (:func:`tf32_remainder`,
:func:`tf32_operand`); :func:`head_products` does that given ``b_low``.

:func:`split_linear` does the same with bfloat16 parts in one cuBLAS product, at the bfloat16
tensor cores' rate but about 20 times further from float64 (the dropped terms are 2⁻¹⁸ of the
product where TF32's are 2⁻²²): an option for the GPU step's float32 K/V projection.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, gdc_launch_dependents, gdc_wait, next_power_of_2, programmatic_options

PRECISION = "tf32x3"

# linear()'s tiles: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for many rows (an H200 sweep at
# 4,096 and 16,384 × 768 × 1,536: bench/results/h200_float32_projections.md), and smaller ones below
# LARGE_ROWS, where the big tiles would leave most of the GPU idle.
LARGE_TILES, SMALL_TILES, LARGE_ROWS = (64, 128, 32, 4, 3), (64, 64, 32, 4, 3), 4096
# Output tiles of linear() that share rows are launched in groups of this many row tiles, so that
# a group's rows and the weight's columns stay in L2 together.
GROUP_ROWS = 8


@triton.jit
def output_tile(rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(row offsets, column offsets, row mask, column mask) of program_id(0)'s tile of a
    [rows, cols] output, its tiles numbered row by row."""
    tiles_c = tl.cdiv(cols, BLOCK_C)
    offs_r = (tl.program_id(0) // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = (tl.program_id(0) % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_r, offs_c, offs_r < rows, offs_c < cols


@triton.jit
def tf32_high(x):
    """x (float32) rounded to its nearest TF32 value (10 mantissa bits; ties away from zero),
    still float32: x − tf32_high(x) is exact, and a TF32 product reads the high part exactly."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def tf32_truncated(x):
    """x (float32) with its 13 low mantissa bits cleared: the part of a float32 operand that a TF32
    tensor-core product reads (it truncates; measured on an H200, Triton's dots at "tf32")."""
    return (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def tf32_operand(x, SPLIT_PRECISION: tl.constexpr):
    """x as the high part of a :func:`split_dot` operand whose low part is x − tf32_truncated(x):
    x itself where the products are TF32 (they read only that part, so a tile loaded for the
    tensor cores goes to them untouched), its truncated part where they are float32."""
    if SPLIT_PRECISION == "tf32":
        return x
    else:
        return tf32_truncated(x)


@triton.jit
def _tf32_remainder_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, x - tf32_truncated(x), mask=mask)


_launch_remainder = CachedLaunch(_tf32_remainder_kernel)
REMAINDER_BLOCK = 4096


def tf32_remainder(x: torch.Tensor) -> torch.Tensor:
    """x − tf32_truncated(x) (x float32 and contiguous; exact): the low part of x for a kernel that
    reads x itself as the high part (:func:`tf32_operand`)."""
    out = torch.empty_like(x)
    if x.numel():
        _launch_remainder((cdiv(x.numel(), REMAINDER_BLOCK),), x, out, x.numel(), BLOCK=REMAINDER_BLOCK)
    return out


@triton.jit
def split_dot(a_high, a_low, b_high, b_low, SPLIT_PRECISION: tl.constexpr):
    """a·b from the TF32 parts of both operands (a = a_high + a_low, likewise b), float32 out: the
    three products that matter, the two small ones first, in a fresh accumulator (Triton's own
    tf32x3 order: the big product then adds to a sum of its own size). ``SPLIT_PRECISION``:
    "tf32" on GPUs with TF32 tensor cores, "ieee" elsewhere (:func:`split_precision`)."""
    part = tl.dot(a_low, b_high, input_precision=SPLIT_PRECISION)
    part = tl.dot(a_high, b_low, part, input_precision=SPLIT_PRECISION)
    return tl.dot(a_high, b_high, part, input_precision=SPLIT_PRECISION)


@triton.jit
def _batched_product_kernel(
    a_ptr, b_ptr, b_low_ptr, bias_ptr, c_ptr, M, N, K,
    stride_as, stride_ah, stride_am, stride_ak, stride_bs, stride_bh, stride_bk, stride_bn,
    stride_cs, stride_ch, stride_cm, stride_cn, stride_bias_h, stride_bias_n,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr, SPLIT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # C[s, h] = A[s, h] @ B[s, h] (+ bias[h]) for every stream s and
    # head h, all by strides, so that heads are read in place from [S, Q, D] and [D, e] tensors and
    # weights [n, k] serve as Bᵀ (no transposed copies). SPLIT: three TF32 products, A split in
    # registers, B read as it is (its high part) and its low part from b_low_ptr (B's strides).
    offs_m, offs_n, mask_m, mask_n = output_tile(M, N, BLOCK_M, BLOCK_N)
    h = tl.program_id(1).to(tl.int64)
    s = tl.program_id(2).to(tl.int64)
    a_base = a_ptr + s * stride_as + h * stride_ah
    b_offs = s * stride_bs + h * stride_bh
    c_tile = (c_ptr + s * stride_cs + h * stride_ch + offs_m[:, None].to(tl.int64) * stride_cm
              + offs_n[None, :] * stride_cn)
    mask_c = mask_m[:, None] & mask_n[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_base + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        b_tile = b_offs + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        mask_b = mask_k[:, None] & mask_n[None, :]
        b = tl.load(b_ptr + b_tile, mask=mask_b, other=0.0).to(tl.float32)
        if SPLIT:
            a_high = tf32_truncated(a)
            b_low = tl.load(b_low_ptr + b_tile, mask=mask_b, other=0.0)
            acc += split_dot(a_high, a - a_high, tf32_operand(b, SPLIT_PRECISION), b_low, SPLIT_PRECISION)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + h * stride_bias_h + offs_n * stride_bias_n, mask=mask_n, other=0.0
                       ).to(tl.float32)[None, :]
    tl.store(c_tile, acc.to(c_ptr.dtype.element_ty), mask=mask_c)


_launch = CachedLaunch(_batched_product_kernel)


@functools.lru_cache(maxsize=None)
def precision(device: torch.device) -> str:
    """The dots' input precision on ``device``: ``PRECISION`` on GPUs with TF32 tensor cores
    (Ampere and later), ``"ieee"`` elsewhere (the interpreter computes a dot exactly in float32
    whatever it is told; older GPUs have no TF32)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return "ieee"
    return PRECISION


def split_precision(device: torch.device) -> str:
    """:func:`split_dot`'s products on ``device``: "tf32" where :func:`precision` takes three-TF32
    dots, "ieee" where it takes float32 ones (the result is then float32's, with one more rounding)."""
    return "tf32" if precision(device) == "tf32x3" else "ieee"


def takes_split_products(device: torch.device) -> bool:
    """Whether kernels on ``device`` take their float32 dots as :func:`split_dot`'s three products:
    where the GPU has TF32 tensor cores, and in the CPU interpreter, which computes them in float32
    (so that the tests run the GPU's code); older GPUs keep float32 dots."""
    return split_precision(device) == "tf32" or device.type == "cpu"


def product_blocks(tiles, m: int, n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of an [m, k] by [k, n] product from ``tiles`` (BLOCK_M, BLOCK_N,
    BLOCK_K, ...) at most: each no larger than the next power of 2 of its size, and at least 16
    (a tensor-core dot's smallest)."""
    return tuple(max(16, min(tile, next_power_of_2(size))) for tile, size in zip(tiles[:3], (m, n, k)))


# head_products()'s largest tiles: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Measured on an H200
# for the Gaussian step's fits ([256, 768] per stream): 128 × 128 tiles on 8 warps were no faster.
HEAD_TILES = (64, 64, 32, 4, 3)


def head_products(a, a_strides, b, b_strides, c, c_strides, m, n, k, heads, streams, precision,
                  bias=None, bias_strides=(0, 0), tiles=None, b_low=None):
    """c[s, h] = a[s, h] @ b[s, h] (+ bias[h]) of [m, k] by [k, n] matrices given by (stream, head,
    row, column) strides, for every stream and head; ``tiles``: (BLOCK_M, BLOCK_N, BLOCK_K, warps,
    stages) at most, default ``HEAD_TILES``. ``b_low``: b's low part (:func:`tf32_remainder`, float32
    like b, same strides) for three TF32 products without splitting b's tiles (:func:`split_dot`
    at :func:`split_precision`; the tensor cores read b's shared-memory tiles along k, so b's k
    stride should be 1), else one dot at ``precision``."""
    tiles = tiles or HEAD_TILES
    block_m, block_n, block_k = product_blocks(tiles, m, n, k)
    warps, stages = tiles[3:]
    _launch((cdiv(m, block_m) * cdiv(n, block_n), heads, streams),
            a, b, b if b_low is None else b_low, bias if bias is not None else c, c, m, n, k, *a_strides,
            *b_strides, *c_strides, *bias_strides, HAS_BIAS=bias is not None, PRECISION=precision,
            SPLIT=b_low is not None, SPLIT_PRECISION=split_precision(c.device), BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, num_warps=warps, num_stages=stages)


@triton.jit
def _split_weight_linear_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_wp, stride_om,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, SPLIT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_ROWS: tl.constexpr,
    PDL: tl.constexpr,
):
    # out = x·Wᵀ (+ bias) with W's TF32 parts read from memory ([2, N, K]: high, low) and x split
    # in registers; each k-tile's three products summed apart, then added (float32 accuracy).
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py)
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_ROWS * tl.cdiv(N, BLOCK_N)
    first_m = (pid // per_group) * GROUP_ROWS
    group_m = tl.minimum(tiles_m - first_m, GROUP_ROWS)
    offs_m = (first_m + (pid % per_group) % group_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = ((pid % per_group) // group_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_tile = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :] * stride_xk
    w_tile = w_ptr + offs_n[None, :] * K + offs_k[:, None]  # [BLOCK_K, BLOCK_N] of Wᵀ
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K and EVEN_N:  # no tile runs past the weight: its loads take no mask
            x = tl.load(x_tile + k0 * stride_xk, mask=mask_m[:, None], other=0.0).to(tl.float32)
            w_high = tl.load(w_tile + k0)
            w_low = tl.load(w_tile + stride_wp + k0)
        else:
            mask_k = offs_k < K - k0
            x = tl.load(x_tile + k0 * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            w_high = tl.load(w_tile + k0, mask=mask_n[None, :] & mask_k[:, None], other=0.0)
            w_low = tl.load(w_tile + stride_wp + k0, mask=mask_n[None, :] & mask_k[:, None], other=0.0)
        x_high = tf32_high(x)
        acc += split_dot(x_high, x - x_high, w_high, w_low, SPLIT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :], acc,
             mask=mask_m[:, None] & mask_n[None, :])


_launch_linear = CachedLaunch(_split_weight_linear_kernel)


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """x (float32, contiguous in its last dimension) rounded to TF32 as :func:`tf32_high` rounds it
    in a kernel (10 mantissa bits, ties away from zero), still float32."""
    return ((x.view(torch.int32) + 0x1000) & -8192).view(torch.float32)


def tf32_parts(weight: torch.Tensor) -> torch.Tensor:
    """The TF32 parts [2, n, k] (float32, contiguous: high, low) of a weight [n, k], for
    :func:`linear`: weight = high + low exactly in float32 (for float32 weights), high rounded to
    TF32. Build them once for a weight that many products read."""
    w = weight.to(torch.float32).contiguous()
    high = tf32_round(w)
    return torch.stack([high, w - high])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)`` in float32 through three-TF32 dots: x [..., k]
    (any float), weight [n, k] or its :func:`tf32_parts` [2, n, k] (what a caller passes who
    multiplies by the same weight again), bias [n] or None; float32 out, as accurate as a float32
    product. Reading W's parts from memory spares the kernel splitting them on every tile."""
    parts = weight if weight.dim() == 3 else tf32_parts(weight)
    rows, k = x.numel() // x.shape[-1], x.shape[-1]
    n = parts.shape[1]
    flat = x.reshape(rows, k)
    out = torch.empty(rows, n, device=x.device, dtype=torch.float32)
    tiles = LARGE_TILES if rows >= LARGE_ROWS else SMALL_TILES
    block_m, block_n, block_k = product_blocks(tiles, rows, n, k)
    warps, stages = tiles[3:]
    _launch_linear((cdiv(rows, block_m) * cdiv(n, block_n),),
                   flat, parts, bias if bias is not None else out, out, rows, n, k, flat.stride(0), flat.stride(1),
                   parts.stride(0), out.stride(0), HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0,
                   EVEN_N=n % block_n == 0,
                   SPLIT_PRECISION=split_precision(x.device), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                   GROUP_ROWS=GROUP_ROWS,
                   **programmatic_options(x.device), num_warps=warps, num_stages=stages)
    return out.view(*x.shape[:-1], n)


# Split products: float32 accuracy on the bfloat16 tensor cores. x = x0 + x1 and w = w0 + w1 with
# every part bfloat16 (x1 = the rounding error of x0, itself rounded); x·w ≈ x0·w0 + x0·w1 + x1·w0
# leaves out x1·w1 and the parts' own rounding, each about 2⁻¹⁸ of |x·w|. As one product with
# three times the inner dimension: [x0 | x0 | x1] · [w0 | w1 | w0]ᵀ.

# torch.mm / torch.addmm with a float32 result of bfloat16 inputs (torch 2.8 and later).
CUBLAS_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")


@triton.jit
def _bfloat16_nearest(x):
    """x (float32) rounded to the nearest bfloat16 value, ties to even, still in float32: the
    conversion that follows is then exact (the CPU interpreter's own conversion truncates)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x == x, bits.to(tl.float32, bitcast=True), x)  # NaN stays NaN


@triton.jit
def _split_rows_kernel(x_ptr, out_ptr, E, stride_x, stride_o, BLOCK_E: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = offs < E
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    hi = _bfloat16_nearest(x)
    lo = _bfloat16_nearest(x - hi).to(tl.bfloat16)
    hi = hi.to(tl.bfloat16)
    base = out_ptr + row * stride_o
    tl.store(base + offs, hi, mask=mask)
    tl.store(base + E + offs, hi, mask=mask)
    tl.store(base + 2 * E + offs, lo, mask=mask)


_launch_split_rows = CachedLaunch(_split_rows_kernel)
SPLIT_BLOCK_E = 256


@on_input_device
def split_rows(x: torch.Tensor) -> torch.Tensor:
    """The left operand of :func:`split_linear`: [x0 | x0 | x1] [rows, 3k] bfloat16 of x [..., k]
    (float32 or narrower; its last dimension unit-stride), x ≈ x0 + x1."""
    k = x.shape[-1]
    flat = x.reshape(-1, k)
    out = torch.empty(flat.shape[0], 3 * k, device=x.device, dtype=torch.bfloat16)
    _launch_split_rows((flat.shape[0], cdiv(k, SPLIT_BLOCK_E)), flat, out, k, flat.stride(0), out.stride(0),
                       BLOCK_E=SPLIT_BLOCK_E)
    return out


def split_weight(weight: torch.Tensor) -> torch.Tensor:
    """The right operand of :func:`split_linear`: [w0 | w1 | w0] [n, 3k] bfloat16 of weight [n, k]."""
    w = weight.to(torch.float32)
    hi = w.to(torch.bfloat16)
    lo = (w - hi.to(torch.float32)).to(torch.bfloat16)
    return torch.cat([hi, lo, hi], dim=-1)


def split_linear(x: torch.Tensor, weight_parts: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x, w, bias)`` in float32 from bfloat16 products: x [..., k], weight_parts
    :func:`split_weight` [n, 3k], bias [n] or None; float32 out, about 5e-6 (relative) from
    float64 where a float32 product is about 3e-7 off and a bfloat16 one 3e-3. One cuBLAS product
    with float32 output on a GPU (``torch.addmm(..., out_dtype=torch.float32)``); elsewhere the same
    parts multiplied in float32, whose products of bfloat16 values are exact."""
    parts = split_rows(x)
    if x.is_cuda and CUBLAS_OUT_DTYPE:
        out = (torch.mm(parts, weight_parts.T, out_dtype=torch.float32) if bias is None else
               torch.addmm(bias.to(torch.float32), parts, weight_parts.T, out_dtype=torch.float32))
    else:
        out = torch.nn.functional.linear(parts.float(), weight_parts.float(),
                                         None if bias is None else bias.to(torch.float32))
    return out.view(*x.shape[:-1], weight_parts.shape[0])
