"""Where the memory's own CUDA graphs stop paying: steps launched from Python against graph replays
whose frames are copied in, at chunks past ``infvideo.graphs.MAX_INPUT_BYTES`` (raised here).

    PYTHONPATH=$PWD python bench/bench_graph_threshold.py [--streams 16 64] [--budget 0.3]

bf16 tokens [S, 256, 32, 768], bf16 projections, 12 heads, 32 queries, the memory full; the
Gaussian basis (T = 1,000, M = 512) with its torch reference beside, and the default rectangular
basis. Prints p50 µs per call: wall-clock (``harness.call_latency``) and ``do_bench``, and how many
steps the memory captured (1: the timed calls replayed it). The threshold belongs where the
replay, its input copy included, stops beating the Python launches
(``bench/results/h200_graph_threshold.txt``).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from infvideo import LongTermMemory, graphs
from infvideo.benchmarks import harness

WIDTH, HEADS, QUERIES, LENGTH, TOKENS = 768, 12, 32, 256, 32
BASES = {"gauss": dict(basis="gaussian", quad_points=1000, past_samples=512), "rect": {}}
PROVIDERS = {"torch": dict(backend="torch", cuda_graphs=False),
             "triton eager": dict(backend="triton", cuda_graphs=False),
             "triton graph": dict(backend="triton", cuda_graphs=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timed calls per row")
    args = parser.parse_args()
    graphs.MAX_INPUT_BYTES = 2 ** 40  # every chunk may be captured
    device = torch.device("cuda")
    for basis, options in BASES.items():
        for streams in args.streams:
            torch.manual_seed(0)
            pk, pv = (nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16) for _ in range(2))
            tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device=device, dtype=torch.bfloat16)
            query = torch.randn(streams, QUERIES, WIDTH, device=device, dtype=torch.bfloat16)
            for provider, settings in PROVIDERS.items():
                if basis == "rect" and provider == "torch":
                    continue
                memory = LongTermMemory(**settings, **options).cuda()

                def step():
                    return memory(tokens, query, pk, pv, HEADS)
                with torch.no_grad():
                    for _ in range(4):
                        step()
                    wall = harness.percentiles(harness.call_latency(step, device, args.budget))[1]
                    gpu = harness.percentiles(harness.gpu_time(step, args.budget))[1]
                captured = len(memory._graphs.steps) if memory._graphs is not None else "-"
                print(f"{basis} S={streams} {provider}: wall {wall:.1f} do_bench {gpu:.1f} graphs {captured}",
                      flush=True)


if __name__ == "__main__":
    main()
