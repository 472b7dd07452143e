"""GPU time of the stacked K|V projection: the Triton kernel against F.linear (cuBLAS).

    PYTHONPATH=$PWD python bench/bench_projection.py

Rows are S·N coefficient rows (N = 256) of width e = 768 projected to 2·768 with a bias, bf16 and
float32; µs per call replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``: host cost
removed), median. Sets ``infvideo.ops.step.TRITON_PROJECTION_ROWS``: the largest row count where Triton is
not slower.
"""
from __future__ import annotations

import statistics

import torch

from infvideo.benchmarks.harness import gpu_time
from infvideo.kernels import projection


def graph_per_call(fn) -> float:
    """Median GPU time (µs) of one call replayed from a CUDA graph (no host cost)."""
    return statistics.median(gpu_time(fn, graph=True))


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| dtype | rows (S·N) | Triton µs | F.linear µs | ratio |")
    print("|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        weight = torch.randn(1536, 768, device="cuda", dtype=dtype) / 28
        bias = torch.randn(1536, device="cuda", dtype=dtype)
        for streams in (1, 2, 4, 8, 16, 64):
            x = torch.randn(streams, 256, 768, device="cuda", dtype=dtype)
            ours = graph_per_call(lambda: projection.linear(x, weight, bias))
            theirs = graph_per_call(lambda: torch.nn.functional.linear(x, weight, bias))
            print(f"| {str(dtype).split('.')[1]} | {streams * 256} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
