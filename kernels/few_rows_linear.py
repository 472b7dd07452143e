"""y = x Wᵀ + b in float16 or bfloat16 for few rows, built for latency: the one-stream step's K|V product.

At one stream the step's K|V product is [256, 768] × [768, 1536], a few microseconds on cuBLAS,
most of them launch and a chain of pipelined loads; launched from torch it cannot start as a
programmatic dependent of the consolidation before it, nor let the attention after it start early.
Here each program owns one [BLOCK_M, BLOCK_N] tile of y and the whole inner dimension, in at most
``MAX_CHUNKS`` chunks of BLOCK_K. It reads its tile of W (and b) before ``gdc_wait``, while the
consolidation still runs, then issues every load of its x rows at once: after the consolidation
the product costs one memory round trip and its dots. A programmatic dependent starts once every
kernel before the one just before it has finished, so the weights may be read early unless that
kernel wrote them (``weights_ready``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv, compiled_on, gdc_launch_dependents, gdc_wait, programmatic, \
    programmatic_options

# Chunks of the inner dimension held per program: (x, W) tiles of [BLOCK_*, BLOCK_K] each.
BLOCK_K = 256
MAX_CHUNKS = 4


@triton.jit
def _chunk(ptr, rows, mask_rows, c: tl.constexpr, K, BLOCK_K: tl.constexpr):
    """Rows ``rows`` of a row-major [?, K] matrix, columns c·BLOCK_K … (c+1)·BLOCK_K − 1 (zeros past K)."""
    k = c * BLOCK_K + tl.arange(0, BLOCK_K)
    return tl.load(ptr + rows[:, None].to(tl.int64) * K + k[None, :], mask=mask_rows[:, None] & (k < K)[None, :],
                   other=0.0)


@triton.jit
def _chunks(ptr, rows, mask_rows, K, CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The four chunks of rows ``rows`` (those past CHUNKS: chunk 0 again, never used)."""
    c0 = _chunk(ptr, rows, mask_rows, 0, K, BLOCK_K)
    c1 = c0
    c2 = c0
    c3 = c0
    if CHUNKS > 1:
        c1 = _chunk(ptr, rows, mask_rows, 1, K, BLOCK_K)
    if CHUNKS > 2:
        c2 = _chunk(ptr, rows, mask_rows, 2, K, BLOCK_K)
    if CHUNKS > 3:
        c3 = _chunk(ptr, rows, mask_rows, 3, K, BLOCK_K)
    return c0, c1, c2, c3


@triton.jit
def _weights(w_ptr, b_ptr, offs_n, mask_n, K, HAS_BIAS: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The program's chunks of W and its bias (float32; zeros without one)."""
    w0, w1, w2, w3 = _chunks(w_ptr, offs_n, mask_n, K, CHUNKS, BLOCK_K)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([w0.shape[0]], dtype=tl.float32)
    return w0, w1, w2, w3, bias


@triton.jit
def _dot_t(a, w, acc, IEEE: tl.constexpr):
    """acc + a wᵀ in float32: tensor cores in the operands' dtype, or IEEE float32 dots (the CPU
    interpreter, whose 16-bit dots are wrong)."""
    if IEEE:
        out = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
    else:
        out = tl.dot(a, tl.trans(w), acc)
    return out


@triton.jit
def _few_rows_linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K,
    HAS_BIAS: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, WEIGHTS_FIRST: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # Chunks past CHUNKS are never compiled.
    if WEIGHTS_FIRST:  # before the wait
        w0, w1, w2, w3, bias = _weights(w_ptr, b_ptr, offs_n, mask_n, K, HAS_BIAS, CHUNKS, BLOCK_K)
    if PDL:  # launched as a programmatic dependent (kernels/_launch.py): x is the previous kernel's output
        gdc_wait()
        gdc_launch_dependents()
    if not WEIGHTS_FIRST:
        w0, w1, w2, w3, bias = _weights(w_ptr, b_ptr, offs_n, mask_n, K, HAS_BIAS, CHUNKS, BLOCK_K)
    x0, x1, x2, x3 = _chunks(x_ptr, offs_m, mask_m, K, CHUNKS, BLOCK_K)
    acc = _dot_t(x0, w0, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
    if CHUNKS > 1:
        acc = _dot_t(x1, w1, acc, IEEE)
    if CHUNKS > 2:
        acc = _dot_t(x2, w2, acc, IEEE)
    if CHUNKS > 3:
        acc = _dot_t(x3, w3, acc, IEEE)
    if HAS_BIAS:
        acc += bias[None, :]
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


_launch_few_rows_linear = CachedLaunch(_few_rows_linear_kernel)

# The output tile and warps of a program.
CONFIG = {"block_m": 64, "block_n": 64, "num_warps": 8}


def serves(inner: int, device: torch.device) -> bool:
    """Whether a product over ``inner`` columns on ``device`` is what this kernel is for: the inner
    dimension fits its chunks (at most MAX_CHUNKS · BLOCK_K) and the device launches kernels as
    programmatic dependents (without them cuBLAS is as quick)."""
    return 0 < inner <= MAX_CHUNKS * BLOCK_K and programmatic(device)


@on_input_device
def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    weights_ready: bool = False) -> torch.Tensor:
    """x Wᵀ + b [M, N] in W's dtype; inputs are checked by the caller.

    x [M, K] and weight [N, K] contiguous, float16 or bfloat16 alike, K within :func:`serves`;
    bias [N] contiguous or None. Products accumulate in float32 and are rounded once.
    ``weights_ready``: the last launch on the stream wrote neither weight nor bias, so a
    programmatic launch reads them before waiting for it.
    """
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=weight.dtype)
    block_m, block_n = CONFIG["block_m"], CONFIG["block_n"]
    _launch_few_rows_linear(
        (cdiv(m, block_m), cdiv(n, block_n)), x, weight, bias if bias is not None else weight, out, m, n, k,
        HAS_BIAS=bias is not None, CHUNKS=cdiv(k, BLOCK_K), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K,
        WEIGHTS_FIRST=weights_ready, IEEE=not compiled_on(x.device), **programmatic_options(x.device), num_warps=CONFIG["num_warps"])
    return out
