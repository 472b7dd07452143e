"""Tiles of the quadrature attention's table kernels on the GPU (issue 18).

    PYTHONPATH=$PWD python bench/tune_quadrature.py [--streams 16] [--once]

Times ``ops.quadrature_attention`` (Gaussian basis
N = 256, T = 1,000 of the exact preset, 12 heads, 32 queries, e = D = 768) for each tile of
``quadrature_table.CONFIG`` (rows per program and warps of each kernel, one kernel's at a time),
float32 and bfloat16 inputs, the density written, and prints each one's p50 GPU time
(replayed from a CUDA graph) and the context's error against float64 on the same nodes; then the
defaults' time per kernel (torch.profiler). ``--once`` only makes five calls of the defaults per
dtype, for a profiler: ``ncu --set full -k regex:"tile_weights|combine" ... tune_quadrature.py --once``.
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton.testing

from infvideo import ops
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.kernels import quadrature_table

from bench_quadrature_gpu import BASIS, HEADS, POINTS, QUERIES, WIDTH, float64_rule, quadrature_context, rel_err


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--changes", type=json.loads, default=None,
                        help='a JSON list of CONFIG changes to time instead of the sweep, e.g. \'[{}, {"block_m": 32}]\'')
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--once", action="store_true",
                        help="no sweep: five calls of the defaults per dtype (for a profiler such as ncu)")
    args = parser.parse_args()
    quad = ops.quadrature_constants(MemoryConfig(num_basis=BASIS, basis="gaussian", quad_points=POINTS),
                                    torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.streams, BASIS, WIDTH)
    base = dict(quadrature_table.CONFIG)
    for dtype in [{"fp32": torch.float32, "bf16": torch.bfloat16}[name] for name in args.dtypes]:
        query = torch.randn(args.streams, QUERIES, WIDTH, device="cuda", generator=gen).to(dtype)
        keys = (torch.randn(shape, device="cuda", generator=gen) * 0.05).to(dtype)
        values = torch.randn(shape, device="cuda", generator=gen).to(dtype)
        exact = quadrature_context(float64_rule(quad), query, keys, values, torch.float64)[0]
        split = "_tf32x3" if dtype == torch.float32 else ""  # the keys of this dtype's products
        sweeps = [dict()] + [{"vector_loads" + split: v} for v in (False, True)]
        sweeps += [{"block_t": t, "block_m": m, "num_warps": w, "num_stages" + split: st}
                   for t, m, w, st in itertools.product((32, 64), (32, 64), (4, 8), (1, 2))]
        sweeps += [{"tiles_per_program": k} for k in (1, 4)]
        sweeps += [{"combine_n" + split: n, "combine_warps": w} for n, w in itertools.product((64, 128), (4, 8))]
        sweeps += [{"density_t": t} for t in (128, 512)]
        if args.changes is not None:
            sweeps = args.changes

        def call():
            return ops.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma, quad.grid, quad.log_weight)
        if args.once:
            for _ in range(5):
                call()
            torch.cuda.synchronize()
            continue
        for change in sweeps:  # one kernel's tile at a time, the others at their defaults
            quadrature_table.CONFIG.update(base, **change)
            try:
                error = rel_err(call()[0], exact)
                time = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median") * 1e3
            except Exception as exc:  # a tile that does not compile (registers, shared memory)
                print(f"{dtype} {change}: {type(exc).__name__}", flush=True)
                continue
            print(f"{str(dtype):15s} {str(change):60s}: {time:8.1f} µs, error {error:.1e}", flush=True)
        quadrature_table.CONFIG.update(base)
        print(f"{dtype}, defaults {base}: CUDA time per kernel (10 calls)")
        print(harness.kernel_times(call, row_limit=12))
    quadrature_table.CONFIG.update(base)


if __name__ == "__main__":
    main()
