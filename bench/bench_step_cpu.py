"""Time one LongTermMemory step on the CPU (the issue's reference configuration).

    python bench/bench_step_cpu.py [--streams 1] [--frames 256] [--repeats 200]

Prints p20/p50/p80 in milliseconds for pooled frames [S, L, e] and for Video-LLaMA tokens
[S, L, 32, e] (pooled inside), after warm-up, with gradients off.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from infvideo import LongTermMemory


def percentiles(fn, repeats: int) -> tuple[float, float, float]:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return tuple(1e3 * times[int(q * (repeats - 1))] for q in (0.2, 0.5, 0.8))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--basis-count", type=int, default=256)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    width, model, heads, queries = 768, 768, 12, 32
    proj_key, proj_value = nn.Linear(width, model), nn.Linear(width, model)
    memory = LongTermMemory(num_basis=args.basis_count, past_samples=args.samples)
    tokens = torch.randn(args.streams, args.frames, 32, width)
    query = torch.randn(args.streams, queries, model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; S={args.streams} L={args.frames} "
          f"N={args.basis_count} M={args.samples} e=D={width} H={heads} Q={queries}")
    with torch.no_grad():
        for name, frames in (("pooled [S, L, e]", tokens.mean(2)), ("tokens [S, L, 32, e]", tokens)):
            p20, p50, p80 = percentiles(lambda: memory(frames, query, proj_key, proj_value, heads), args.repeats)
            print(f"{name:22s} p20 {p20:7.3f} ms  p50 {p50:7.3f} ms  p80 {p80:7.3f} ms")


if __name__ == "__main__":
    main()
