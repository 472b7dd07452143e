"""Tile shapes of the fused consolidation kernel on the GPU, per configuration (the quadrature's:
bench/tune_quadrature.py).

    python bench/tune_consolidate.py [--streams 1 64] [--block-e 128 256] [--rows 64 128] [--warps 2 4 8]
                                     [--stages 2 3] [--dtype bf16]

The shipped tiles' time comes first, then each tile of the sweep.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

import infvideo.ops as ops
from infvideo.config import MemoryConfig
from infvideo.kernels import consolidate
from infvideo.reference.fit import consolidation_fit


STREAMS = (1, 64)
BLOCK_E = (64, 128, 256)


def main(streams_list=STREAMS, block_es=BLOCK_E, rows_list=(64, 128), warps_list=(2, 4, 8), stages_list=(2, 3),
         dtype=torch.bfloat16):
    cfg = MemoryConfig()
    plan = ops.plan_on(consolidation_fit(cfg, 256), torch.device("cuda"))
    default = dict(consolidate.CONFIG)
    for streams in streams_list:
        frames = torch.randn(streams, 256, 32, 768, device="cuda", dtype=dtype)
        past = torch.randn(streams, 256, 768, device="cuda")
        mass = torch.rand(streams, 12, 256, device="cuda")
        bins = ops.quantile_bins(mass, 512)
        nbytes = frames.numel() * frames.element_size() + past.numel() * 4 * 2
        ms = triton.testing.do_bench(lambda: ops.quantile_bins(mass, 512), return_mode="median")
        print(f"S={streams} quantile_bins {ms * 1e3:.1f} us")
        # What torch reads at: the same tokens summed over each frame, and over everything.
        for name, reduce in (("torch sum over tokens", lambda: frames.sum(2, dtype=torch.float32)),
                             ("torch sum of all", lambda: frames.sum(dtype=torch.float32))):
            ms = triton.testing.do_bench(reduce, return_mode="median")
            rate = frames.numel() * frames.element_size() / ms / 1e6
            print(f"S={streams} {name}: {ms * 1e3:.1f} us, {rate:.0f} GB/s")
        consolidate.CONFIG.update(default)
        ms = triton.testing.do_bench(lambda: ops.rect_consolidate(frames, past, plan, bins), return_mode="median")
        print(f"S={streams} default tiles: {ms * 1e3:.1f} us, {nbytes / ms / 1e6:.0f} GB/s")
        for block_e, rows, warps, stages in itertools.product(block_es, rows_list, warps_list, stages_list):
            # Fewer than 16 streams take block_e_few_streams: set both, so each S tries every width.
            consolidate.CONFIG.update(block_e=block_e, block_e_few_streams=block_e, block_rows=rows,
                                      block_rows_few_streams=rows, num_warps=warps, num_warps_few_streams=warps,
                                      num_stages=stages)
            ms = triton.testing.do_bench(lambda: ops.rect_consolidate(frames, past, plan, bins), return_mode="median")
            print(f"S={streams} block_e={block_e} rows={rows} warps={warps} stages={stages}: "
                  f"{ms * 1e3:.1f} us, {nbytes / ms / 1e6:.0f} GB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    parser.add_argument("--block-e", type=int, nargs="+", default=list(BLOCK_E))
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="the tokens' dtype")
    args = parser.parse_args()
    main(args.streams, args.block_e, args.rows, args.warps, args.stages,
         {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype])
