"""Where a step's time goes on the GPU: per-kernel CUDA time (torch.profiler) and host-side Python time.

    PYTHONPATH=$PWD python bench/profile_step_gpu.py [--case s1|s64|gauss]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from infvideo import LongTermMemory

WIDTH, HEADS, QUERIES = 768, 12, 32
CASES = {"s1": (1, 256, torch.bfloat16, 32, {}), "s64": (64, 256, torch.bfloat16, 32, {}),
         "gauss": (16, 256, torch.float32, None, dict(basis="gaussian", quad_points=1000))}


def make(streams, length, dtype, tokens):
    """Projections, frames ([S, L, tokens, e] or pooled [S, L, e]) and query of a case."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(WIDTH, WIDTH).cuda().to(dtype), nn.Linear(WIDTH, WIDTH).cuda().to(dtype)
    shape = (streams, length, tokens, WIDTH) if tokens else (streams, length, WIDTH)
    frames = torch.randn(shape, device="cuda", dtype=dtype)
    return pk, pv, frames, torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=dtype)


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
