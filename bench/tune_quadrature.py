"""Tiles of the quadrature attention's table kernels on the GPU (issue 18).

    PYTHONPATH=$PWD python bench/tune_quadrature.py [--streams 16]

Times ``ops.quadrature_attention`` with ``quadrature.CONFIG["variant"] = "table"`` (Gaussian basis
N = 256, T = 1,000 of the exact preset, 12 heads, 32 queries, e = D = 768) for each tile of
``quadrature_table.CONFIG`` (rows per program, points per tile, warps of both kernels), float32
and bfloat16 inputs, with and without the density, and prints each one's p50 GPU time (replayed from a CUDA graph) and the
context's error against float64 on the same nodes.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from infvideo import ops
from infvideo.config import MemoryConfig
from infvideo.kernels import quadrature, quadrature_table

from bench_quadrature_gpu import BASIS, HEADS, POINTS, QUERIES, WIDTH, float64_rule, quadrature_context, rel_err


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    quad = ops.quadrature_constants(MemoryConfig(num_basis=BASIS, basis="gaussian", quad_points=POINTS),
                                    torch.device("cuda"))
    quadrature.CONFIG["variant"] = "table"
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.streams, BASIS, WIDTH)
    base = dict(quadrature_table.CONFIG)
    for dtype in (torch.float32, torch.bfloat16):
        query = torch.randn(args.streams, QUERIES, WIDTH, device="cuda", generator=gen).to(dtype)
        keys = (torch.randn(shape, device="cuda", generator=gen) * 0.05).to(dtype)
        values = torch.randn(shape, device="cuda", generator=gen).to(dtype)
        exact = quadrature_context(float64_rule(quad), query, keys, values, torch.float64)[0]
        for block_m, block_t, warps, combine_warps in itertools.product((32, 64, 128), (32, 64), (4, 8), (4, 8)):
            quadrature_table.CONFIG.update(block_m=block_m, block_t=block_t, num_warps=warps,
                                           combine_warps=combine_warps)
            times = []
            for density in (True, False):
                def call(density=density):
                    return torch.ops.infvideo.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma,
                                                                   quad.grid, quad.log_weight, density)
                try:
                    error = rel_err(call()[0], exact)
                    times.append(triton.testing.do_bench_cudagraph(call, rep=100, return_mode="median") * 1e3)
                except Exception as exc:  # a tile that does not compile (registers, shared memory)
                    print(f"{dtype} {block_m} {block_t} {warps} {combine_warps}: {type(exc).__name__}", flush=True)
                    break
            else:
                print(f"{str(dtype):15s} block_m {block_m:3d} block_t {block_t:3d} warps {warps} combine {combine_warps}:"
                      f" {times[0]:8.1f} µs with density, {times[1]:8.1f} without, error {error:.1e}", flush=True)
    quadrature_table.CONFIG.update(base)


if __name__ == "__main__":
    main()
