"""The Gaussian step's fit products on the GPU (issue 18): tiles of the three-TF32 Triton products
against cuBLAS, float32 and three TF32 passes over split operands.

    cd bench && PYTHONPATH=.. python tune_fit_products.py [--streams 16 64]

B = G_framesᵀ X + (G_pastᵀ Ψ_u) B_past for pooled frames X [S, 256, 768], B_past [S, 256, 768] and
ψ at 512 sticky samples Ψ_u [S, 512, 256] (N = 256, the exact preset's fit): ``ops.step``'s
products (``kernels/products.head_products``) at each tile of the sweep; cuBLAS in float32 (no
tensor cores); cuBLAS TF32 on operands split into a TF32 part and its remainder, three products
each (the split counted in the time). GPU time p50 (CUDA graph replay) and each result's error
against float64.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from infvideo.config import MemoryConfig
from infvideo.kernels import products
from infvideo.ops import step as step_module
from infvideo.reference.fit import consolidation_fit, on_device

LENGTH, WIDTH, SAMPLES = 256, 768, 512


def tf32_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with its low 13 mantissa bits cleared, the remainder): both exact in float32."""
    big = (x.view(torch.int32) & -8192).view(torch.float32)
    return big, x - big


def split_product(a, b):
    """a @ b as three TF32 cuBLAS products of the split operands."""
    a_big, a_small = tf32_split(a)
    b_big, b_small = tf32_split(b)
    return a_big @ b_big + (a_big @ b_small + a_small @ b_big)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    cfg = MemoryConfig(basis="gaussian", past_samples=SAMPLES)
    fit = on_device(consolidation_fit(cfg, LENGTH), torch.device("cuda"), torch.float32)
    n = fit.frame_g.shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    for streams in args.streams:
        frames = torch.randn(streams, LENGTH, WIDTH, device="cuda", generator=gen)
        past = torch.randn(streams, n, WIDTH, device="cuda", generator=gen)
        mass = torch.rand(streams, 24, cfg.sticky_bins, device="cuda", generator=gen) ** 4
        basis = step_module._kernel_past_samples(cfg, mass, torch.float32, torch.device("cuda")).dense
        exact = (torch.einsum("ln,sle->sne", fit.frame_g.double(), frames.double())
                 + (fit.past_g.double().T @ basis.double()) @ past.double())

        def error(got):
            return float((got.double() - exact).norm() / exact.norm())

        def time(call):
            return triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median") * 1e3

        def cublas_fp32():
            return torch.einsum("ln,sle->sne", fit.frame_g, frames) + (fit.past_g.T @ basis) @ past

        def cublas_split():
            return split_product(fit.frame_g.T, frames) + split_product(split_product(fit.past_g.T, basis), past)

        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"S={streams} cuBLAS float32: {time(cublas_fp32):8.1f} µs, error {error(cublas_fp32()):.1e}", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"S={streams} cuBLAS TF32 x3 split: {time(cublas_split):8.1f} µs, error {error(cublas_split()):.1e}",
              flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False

        def triton_products():
            return step_module._dense_fit_products(frames, past, basis, fit)

        base = products.HEAD_TILES
        for tiles in itertools.product((64, 128), (64, 128), (32, 64), (4, 8), (2, 3, 4)):
            if tiles[0] * tiles[1] > 64 * 128 and tiles[3] == 4:
                continue
            products.HEAD_TILES = tiles
            try:
                result = triton_products()
                took = time(triton_products)
            except Exception as exc:  # a tile that does not compile (registers, shared memory)
                print(f"S={streams} tiles {tiles}: {type(exc).__name__}", flush=True)
                continue
            print(f"S={streams} Triton tiles {tiles}: {took:8.1f} µs, error {error(result):.1e}", flush=True)
        products.HEAD_TILES = base


if __name__ == "__main__":
    main()
