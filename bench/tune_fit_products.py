"""The Gaussian step's fit on the GPU (issue 18): its products' tiles, against cuBLAS float32.

    cd bench && PYTHONPATH=.. python tune_fit_products.py [--streams 16 64]

B = G_framesᵀ X + (G_pastᵀ Ψ_u) B_past for pooled frames X [S, 256, 768], B_past [S, 256, 768] and
ψ at 512 sticky quantile samples (N = 256, the exact preset's fit, random sticky masses):
cuBLAS in float32 (no tensor cores) on Ψ_u; the step's Triton kernels
(``ops.step._kernel_later_fit``: the sample times, G_pastᵀ Ψ_u with ψ evaluated inside the
product, ``kernels/gaussian_fit.py``, then the three-TF32 products) at each tile of the sweep of
``gaussian_fit.TILES`` and of the products' ``FIT_TILES``. GPU time p50 (CUDA graph replay) and
each result's error against float64.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from infvideo.config import MemoryConfig
from infvideo.kernels import gaussian_fit
from infvideo.ops import step as step_module
from infvideo.reference.fit import consolidation_fit, on_device
from infvideo.reference.step import past_samples

LENGTH, WIDTH, SAMPLES = 256, 768, 512


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    cfg = MemoryConfig(basis="gaussian", past_samples=SAMPLES)
    device = torch.device("cuda")
    fit = on_device(consolidation_fit(cfg, LENGTH), device, torch.float32)
    n = fit.frame_g.shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    for streams in args.streams:
        frames = torch.randn(streams, LENGTH, WIDTH, device="cuda", generator=gen)
        past = torch.randn(streams, n, WIDTH, device="cuda", generator=gen)
        mass = torch.rand(streams, 24, cfg.sticky_bins, device="cuda", generator=gen) ** 4
        basis = past_samples(cfg, mass, torch.float32, device).dense
        exact = (torch.einsum("ln,sle->sne", fit.frame_g.double(), frames.double())
                 + (fit.past_g.double().T @ past_samples(cfg, mass, torch.float64, device).dense) @ past.double())

        def report(what, call):
            error = float((call().double() - exact).norm() / exact.norm())
            took = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median") * 1e3
            print(f"S={streams} {what}: {took:8.1f} µs, error {error:.1e}", flush=True)

        report("cuBLAS float32", lambda: torch.einsum("ln,sle->sne", fit.frame_g, frames)
               + (fit.past_g.T @ basis) @ past)
        report("Triton products on Ψ_u", lambda: step_module._dense_fit_products(frames, past, basis, fit))

        def later_fit():
            return step_module._kernel_later_fit(cfg, fit, frames, past, mass)

        base_mix, base_fit = gaussian_fit.TILES, step_module.FIT_TILES
        for tiles in itertools.product((64, 128), (64, 128), (32, 64), (4, 8)):
            gaussian_fit.TILES = tiles
            try:
                report(f"Triton later fit, mix tiles {tiles}", later_fit)
            except Exception as exc:  # a tile that does not compile (registers, shared memory)
                print(f"S={streams} mix tiles {tiles}: {type(exc).__name__}", flush=True)
        gaussian_fit.TILES = base_mix
        for tiles in [(128, 64, 32, 4, 3), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (64, 64, 32, 4, 3)]:
            step_module.FIT_TILES = tiles
            report(f"Triton later fit, product tiles {tiles}", later_fit)
        step_module.FIT_TILES = base_fit


if __name__ == "__main__":
    main()
