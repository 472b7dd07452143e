"""Time one LongTermMemory step on the CPU (the issue's reference configuration).

    PYTHONPATH=$PWD python bench/bench_step_cpu.py [--streams 1] [--frames 256] [--repeats 200]

Prints p20/p50/p80 in milliseconds for pooled frames [S, L, e] and for Video-LLaMA tokens
[S, L, 32, e] (pooled inside), after warm-up, with gradients off, for the torch reference and,
where the C++ extension is built, the csrc ``cpu`` backend; beside them, in the same run (the rows
taking turns, --rounds), the four matrix products a step cannot avoid (its arithmetic floor on
this CPU) and the published code's cost structure (infvideo/benchmarks/published.py).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from infvideo import LongTermMemory, available_backends
from infvideo.benchmarks.harness import percentiles as p20_p50_p80
from infvideo.benchmarks.published import published_step


def percentiles(rows, repeats: int, rounds: int) -> list[tuple[float, float, float]]:
    """p20/p50/p80 (ms) of each row's calls. The rows take turns, ``rounds`` times ``repeats / rounds``
    calls each, so that a slow stretch of a shared machine falls on every row alike rather than on one."""
    times = [[] for _ in rows]
    for fn in rows:
        for _ in range(min(10, repeats)):
            fn()
    per_round = max(1, repeats // rounds)
    for _ in range(max(1, repeats // per_round)):
        for fn, row_times in zip(rows, times):
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                row_times.append(time.perf_counter() - start)
    return [tuple(1e3 * p for p in p20_p50_p80(t)) for t in times]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--basis-count", type=int, default=256)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10, help="turns the rows take (see percentiles)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    width, model, heads, queries = 768, 768, 12, 32
    proj_key, proj_value = nn.Linear(width, model), nn.Linear(width, model)
    memories = {backend: LongTermMemory(num_basis=args.basis_count, past_samples=args.samples, backend=backend)
                for backend in ("torch", "cpu") if backend in available_backends()}
    tokens = torch.randn(args.streams, args.frames, 32, width)
    query = torch.randn(args.streams, queries, model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; S={args.streams} L={args.frames} "
          f"N={args.basis_count} M={args.samples} e=D={width} H={heads} Q={queries}")
    pooled = tokens.mean(2)
    coef = torch.randn(args.streams, args.basis_count, width)
    qh = torch.randn(args.streams, heads, queries, model // heads)
    weight = proj_key.weight.reshape(heads, model // heads, width)
    weights = torch.rand(args.streams, heads * queries, args.basis_count)

    def products():
        u = torch.matmul(qh, weight).reshape(args.streams, -1, width)
        torch.matmul(u, coef.transpose(1, 2))
        mixed = torch.matmul(weights, coef).reshape(args.streams, heads, queries, width)
        torch.matmul(mixed, weight.transpose(1, 2))

    with torch.no_grad():
        rows = [row for backend, memory in memories.items() for row in (
            (f"{backend}: pooled [S, L, e]", lambda m=memory: m(pooled, query, proj_key, proj_value, heads)),
            (f"{backend}: tokens [S, L, 32, e]", lambda m=memory: m(tokens, query, proj_key, proj_value, heads)))]
        rows.append(("matrix products only", products))
        results = percentiles([fn for _, fn in rows], args.repeats, args.rounds)
        results += percentiles([lambda: published_step(pooled, coef, query, proj_key, proj_value, heads,
                                                       num_basis=args.basis_count, samples=args.samples)], 3, 1)
        for name, (p20, p50, p80) in zip([name for name, _ in rows] + ["published-cost baseline"], results):
            print(f"{name:30s} p20 {p20:9.3f} ms  p50 {p50:9.3f} ms  p80 {p80:9.3f} ms")


if __name__ == "__main__":
    main()
