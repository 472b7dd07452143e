"""The stacked K|V projection of a few streams' coefficients: Y = X Wᵀ + b, one Triton launch.

At one stream the product is small (X [256, 768] by Wᵀ [768, 1536], 0.6 GFLOP, a few µs of GPU
time) and its host cost dominates: through torch (F.linear → addmm → cuBLASLt, whose heuristic
query runs on every call) it took 14-17 µs of host time per call on the H100 machine, about a
third of an eager step launched from C++ (bench/bench_host_cost.py). This kernel launches like the
step's other kernels (2-4 µs from a launch plan). Large and float32 products stay on cuBLAS,
which is faster on the GPU there (``infvideo.ops.step.TRITON_PROJECTION_ROWS``).

One program per [BLOCK_M, BLOCK_N] tile of Y, accumulating in float32 over K in BLOCK_K steps;
the bias is added in float32 before the single rounding to Y's dtype (as cuBLAS's bias epilogue
does). float32 inputs use exact (IEEE) float32 products, as torch does with TF32 off.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                   HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = rows < M
    mask_n = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + cols.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        ks = k + offs_k
        mask_k = ks < K
        x = tl.load(x_rows + ks[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_rows + ks[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


_launch_linear = CachedLaunch(_linear_kernel)


@on_input_device
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [..., K] (last stride 1, rows evenly strided), weight
    [N, K] (last stride 1) and bias [N] in one dtype (float32, float16 or bfloat16); returns a new
    contiguous [..., N] tensor of that dtype."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)  # a view for the step's contiguous coefficients
    m, n = rows.shape[0], weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=weight.dtype)
    block_m, block_n, block_k = 64, 64, 64
    _launch_linear(
        (cdiv(m, block_m), cdiv(n, block_n)),
        rows, weight, bias if bias is not None else weight, out, m, n, k, rows.stride(0), weight.stride(0),
        out.stride(0),
        # float32 takes exact (IEEE) fp32 products; so does bfloat16 under the CPU interpreter, whose
        # bf16 dot is wrong (Triton 3.9).
        HAS_BIAS=bias is not None,
        IEEE=weight.dtype == torch.float32 or (x.device.type == "cpu" and weight.dtype == torch.bfloat16),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3,
    )
    return out.view(*x.shape[:-1], n)
