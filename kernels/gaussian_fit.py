"""The Gaussian consolidation's past part: G_pastᵀ Ψ(u) with ψ evaluated inside the product.

A consolidation reads each stream's old signal at M sticky sample times u [S, M]; with a Gaussian
basis its fit takes G_pastᵀ Ψ_u [N, N] per stream, Ψ_u[m, n] = ψ_n(u_m), before that map meets the
old coefficients (``ops.step``). Here the [M, N] tile of ψ is computed in registers where the
product needs it, so Ψ_u never reaches memory. The times come sorted (the quantile sampler's are),
so the samples within ``CUTOFF`` widths of some centre of an output tile form one run, and the
product loops over that run only: the samples left out have ψ below e^-32 of its peak there (the
cutoff of the quadrature's bands too), far under float32 rounding of the terms kept.

ψ_n(u) = exp(-z²/2) / (σ_n √2π), z = (u - μ_n) / σ_n: u - μ_n in float64 (times are float64, and
a narrow Gaussian's z would otherwise carry the time's float32 rounding, 1e-5 of σ), then float32;
the error of ψ stays below 1e-7 of its peak.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_input_device
from ._launch import CachedLaunch, cdiv
from .products import output_tile

CUTOFF = 8.0
# (rows of G_pastᵀ, basis columns, samples) per tile, warps.
TILES = (128, 64, 32, 4)


@triton.jit
def _sample_mix_kernel(g_ptr, t_ptr, mu_ptr, inv_sigma_ptr, peak_ptr, out_ptr, N, M,
                       stride_gm, stride_gn, stride_ts, stride_os, stride_on, CUTOFF: tl.constexpr,
                       PRECISION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    # out[s, r, n] = Σ_m G[m, r] ψ_n(t[s, m]): rows r of G_pastᵀ, basis columns n.
    offs_r, offs_n, mask_r, mask_n = output_tile(N, N, BLOCK_R, BLOCK_N)
    s = tl.program_id(1).to(tl.int64)
    mu = tl.load(mu_ptr + offs_n, mask=mask_n, other=0.0)
    inv_sigma = tl.load(inv_sigma_ptr + offs_n, mask=mask_n, other=1.0)
    peak = tl.load(peak_ptr + offs_n, mask=mask_n, other=0.0)
    # The times that can reach a column of this tile, μ ± CUTOFF·σ, are one run of the sorted
    # samples: those below and above it are counted, and the product loops over the run only.
    reach = CUTOFF / inv_sigma.to(tl.float64)
    reach_lo = tl.min(tl.where(mask_n, mu - reach, float("inf")), axis=0)
    reach_hi = tl.max(tl.where(mask_n, mu + reach, -float("inf")), axis=0)
    below = 0
    above = 0
    for k0 in range(0, M, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < M
        t = tl.load(t_ptr + s * stride_ts + offs_k, mask=mask_k, other=0.0)
        below += tl.sum((mask_k & (t < reach_lo)).to(tl.int32), axis=0)
        above += tl.sum((mask_k & (t > reach_hi)).to(tl.int32), axis=0)
    end = M - above
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for k0 in range(below, end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        t = tl.load(t_ptr + s * stride_ts + offs_k, mask=mask_k, other=0.0)
        z = (t[:, None] - mu[None, :]).to(tl.float32) * inv_sigma[None, :]
        psi = tl.where(mask_k[:, None], tl.exp(-0.5 * z * z) * peak[None, :], 0.0)
        g = tl.load(g_ptr + offs_k[None, :] * stride_gm + offs_r[:, None] * stride_gn,
                    mask=mask_k[None, :] & mask_r[:, None], other=0.0)
        acc = tl.dot(g, psi, acc, input_precision=PRECISION)
    tl.store(out_ptr + s * stride_os + offs_r[:, None] * stride_on + offs_n[None, :], acc,
             mask=mask_r[:, None] & mask_n[None, :])


_launch = CachedLaunch(_sample_mix_kernel)


@on_input_device
def sample_mix(past_g: torch.Tensor, points: torch.Tensor, mu: torch.Tensor, inv_sigma: torch.Tensor,
               peak: torch.Tensor, precision: str) -> torch.Tensor:
    """G_pastᵀ Ψ(u) [S, N, N] (float32) for the fit's past rows ``past_g`` [M, N] (float32, any
    strides), sample times ``points`` [S, M] (float64, last stride 1, sorted ascending in each row)
    and the basis as centres ``mu`` (float64 [N]), 1/σ ``inv_sigma`` and peaks 1/(σ√2π) ``peak``
    (float32 [N]);
    ``precision``: the dots' input precision (``products.precision``)."""
    streams, samples = points.shape
    n = mu.numel()
    out = torch.empty(streams, n, n, device=points.device, dtype=torch.float32)
    block_r, block_n, block_k, warps = TILES
    _launch((cdiv(n, block_r) * cdiv(n, block_n), streams),
            past_g, points, mu, inv_sigma, peak, out, n, samples, past_g.stride(0), past_g.stride(1),
            points.stride(0), out.stride(0), out.stride(1), CUTOFF=CUTOFF, PRECISION=precision,
            BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return out
