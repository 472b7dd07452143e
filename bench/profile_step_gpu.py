"""Where a step's time goes on the GPU: per-kernel CUDA time (torch.profiler) and host-side Python time.

    python bench/profile_step_gpu.py [--case s1|s64|gauss]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step_gpu import HEADS, make  # noqa: E402

from infvideo import LongTermMemory  # noqa: E402

CASES = {"s1": (1, 256, torch.bfloat16, 32, {}), "s64": (64, 256, torch.bfloat16, 32, {}),
         "gauss": (16, 256, torch.float32, None, dict(basis="gaussian", quad_points=1000))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    for name in args.case or sorted(CASES):
        streams, length, dtype, tokens, kwargs = CASES[name]
        pk, pv, frames, query = make(streams, length, dtype, tokens)
        memory = LongTermMemory(backend="triton", check_finite=False, cuda_graphs=False, **kwargs).cuda()
        with torch.no_grad():
            for _ in range(5):
                memory(frames, query, pk, pv, HEADS)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    memory(frames, query, pk, pv, HEADS)
                torch.cuda.synchronize()
            print(f"== {name}: CUDA time per kernel (10 steps)")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
            if name == "s1":
                host = cProfile.Profile()
                host.enable()
                for _ in range(200):
                    memory(frames, query, pk, pv, HEADS)
                host.disable()
                torch.cuda.synchronize()
                print("== s1 host time (200 steps)")
                pstats.Stats(host).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
