"""Tile shapes of the fused consolidation on the GPU: time and bandwidth per configuration.

    python bench/tune_consolidate.py
"""
from __future__ import annotations

import itertools

import torch
import triton.testing

import infvideo.ops as ops
from infvideo.config import MemoryConfig
from infvideo.kernels import consolidate
from infvideo.reference.fit import consolidation_fit


def main():
    cfg = MemoryConfig()
    plan = ops.plan_on(consolidation_fit(cfg, 256), torch.device("cuda"))
    for streams in (1, 64):
        frames = torch.randn(streams, 256, 32, 768, device="cuda", dtype=torch.bfloat16)
        past = torch.randn(streams, 256, 768, device="cuda")
        mass = torch.rand(streams, 12, 256, device="cuda")
        bins = ops.quantile_bins(mass, 512)
        nbytes = frames.numel() * 2 + past.numel() * 4 * 2
        ms = triton.testing.do_bench(lambda: ops.quantile_bins(mass, 512), return_mode="median")
        print(f"S={streams} quantile_bins {ms * 1e3:.1f} us")
        for block_e, rows, warps, stages in itertools.product((128, 256), (32, 64, 128), (4, 8), (2, 3)):
            consolidate.CONFIG.update(block_e=block_e, block_rows=rows, num_warps=warps, num_stages=stages)
            ms = triton.testing.do_bench(lambda: ops.rect_consolidate(frames, past, plan, bins), return_mode="median")
            print(f"S={streams} block_e={block_e} rows={rows} warps={warps} stages={stages}: "
                  f"{ms * 1e3:.1f} us, {nbytes / ms / 1e6:.0f} GB/s")


if __name__ == "__main__":
    main()
