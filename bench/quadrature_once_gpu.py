"""One call of the Gaussian quadrature attention at the issue's size, for a profiler to capture.

    PYTHONPATH=$PWD ncu --section SpeedOfLight --section WarpStateStats -k regex:quadrature \\
        python bench/quadrature_once_gpu.py [--dtype fp32|bf16] [--triton]

S = 16, N = 256, T = 1,000 nodes (exact preset), 12 heads, 32 queries, e = D = 768: two warm-up
calls, then one call between ``cudaProfilerStart``/``Stop`` markers.
"""
from __future__ import annotations

import argparse

import torch

from infvideo import ops
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.ops import quadrature_table_attention

STREAMS, QUERIES, WIDTH, HEADS, BASIS, POINTS = 16, 32, 768, 12, 256, 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--triton", action="store_true", help="Triton's kernels instead of the CUDA one")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    quad = ops.quadrature_constants(MemoryConfig(num_basis=BASIS, basis="gaussian", quad_points=POINTS),
                                    torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    query = torch.randn(STREAMS, QUERIES, WIDTH, device="cuda", generator=gen).to(dtype)
    keys = (torch.randn(STREAMS, BASIS, WIDTH, device="cuda", generator=gen) * 0.05).to(dtype)
    values = torch.randn(STREAMS, BASIS, WIDTH, device="cuda", generator=gen).to(dtype)
    with harness.overrides([(quadrature_table_attention, "ENABLED", not args.triton)]):
        for _ in range(2):
            ops.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma, quad.grid, quad.log_weight)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        ops.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma, quad.grid, quad.log_weight)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
