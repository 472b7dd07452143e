"""Time the csrc CUDA kernels against the Triton ones, per op and per memory step, on one GPU.

    PYTHONPATH=$PWD python bench/bench_cuda_vs_triton.py --out cuda_vs_triton.csv [--streams 1 16 64] [--budget 0.1]

Sizes are the issue's: L = 256 frames of 32 Video-LLaMA tokens (bf16), N = 256, M = 512,
e = D = 768, 12 heads, 32 queries. Each row is one (kernel, provider, streams, dtype): p20 /
p50 / p80 in µs from ``triton.testing.do_bench`` (CUDA events around each call), and ``graph_us``,
the median time per call from ``do_bench_cudagraph`` (calls replayed from a CUDA graph: the
kernels' own time, without the host's launch cost), with the GPU, torch version and commit. Steps run with check_finite=False (no host synchronisation), so they time the kernels and
their launches. Needs a GPU, Triton and the extension built with CUDA.
"""
from __future__ import annotations

import argparse
import csv
import statistics

import torch
from torch import nn

import infvideo.ops as ops
from infvideo import LongTermMemory, info
from infvideo.config import MemoryConfig
from infvideo.reference import fit as ref_fit
from infvideo.benchmarks.harness import commit, gpu_time, percentiles

PROVIDERS = ("triton", "cuda")
LENGTH, TOKENS, BASIS, SAMPLES, WIDTH, HEADS, QUERIES = 256, 32, 256, 512, 768, 12, 32


def op_cases(streams: int, device: torch.device):
    """(kernel, dtype, fn(provider)) for each op at ``streams`` streams."""
    gen = torch.Generator(device).manual_seed(streams)
    cfg = MemoryConfig(num_basis=BASIS, past_samples=SAMPLES)
    plan = ops.plan_on(ref_fit.consolidation_fit(cfg, LENGTH), device)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device=device, generator=gen).to(torch.bfloat16)
    past = torch.randn(streams, BASIS, WIDTH, device=device, generator=gen)
    mass = torch.rand(streams, HEADS * 2, BASIS, device=device, generator=gen)
    bins = ops.quantile_bins(mass, SAMPLES, backend="triton")
    query = torch.randn(streams, QUERIES, WIDTH, device=device, generator=gen)
    cases = [("rect_consolidate", "bf16 tokens",
              lambda p: ops.rect_consolidate(tokens, past, plan, bins, cast_dtype=torch.bfloat16, backend=p)),
             ("quantile_bins", "fp32", lambda p: ops.quantile_bins(mass, SAMPLES, backend=p))]
    for dtype in (torch.float32, torch.bfloat16):
        keys = torch.randn(streams, BASIS, WIDTH, device=device, generator=gen).to(dtype)
        values = torch.randn(streams, BASIS, WIDTH, device=device, generator=gen).to(dtype)
        cases.append(("slot_attention", f"{str(dtype)[6:]} K/V",
                      lambda p, k=keys, v=values: ops.slot_attention(query, k, v, HEADS, backend=p)))
    return cases


def step_case(streams: int, device: torch.device, provider: str, weight_dtype: torch.dtype):
    """One LongTermMemory step on bf16 tokens, after two steps that fill the memory."""
    torch.manual_seed(0)
    proj_key = nn.Linear(WIDTH, WIDTH).to(device, weight_dtype)
    proj_value = nn.Linear(WIDTH, WIDTH).to(device, weight_dtype)
    memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend=provider, check_finite=False,
                            cuda_graphs=False).to(device)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device=device).to(torch.bfloat16)
    query = torch.randn(streams, QUERIES, WIDTH, device=device)

    def step():
        return memory(tokens, query, proj_key, proj_value, HEADS)

    step()
    step()
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--budget", type=float, default=0.1, help="seconds of timed calls per row and mode")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_vs_triton.py needs a GPU")
    if "cuda" not in info()["built"]:
        raise SystemExit("the extension was not built with CUDA: python setup.py build_ext --inplace (see csrc/README.md)")
    device = torch.device("cuda")
    meta = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "commit": commit()}
    rows = []
    with torch.no_grad():
        for streams in args.streams:
            cases = [(kernel, dtype, lambda p, fn=fn: (lambda: fn(p))) for kernel, dtype, fn in op_cases(streams, device)]
            for weight_dtype in (torch.float32, torch.bfloat16):
                cases.append(("memory step", f"bf16 tokens, {str(weight_dtype)[6:]} projections",
                              lambda p, w=weight_dtype: step_case(streams, device, p, w)))
            for kernel, dtype, make in cases:
                for provider in PROVIDERS:
                    fn = make(provider)
                    p20, p50, p80 = percentiles(gpu_time(fn, args.budget))
                    graph = (statistics.median(gpu_time(fn, args.budget, graph=True)) if kernel != "memory step"
                             else float("nan"))
                    rows.append({"kernel": kernel, "provider": provider, "streams": streams, "dtype": dtype,
                                 "p20_us": f"{p20:.1f}", "p50_us": f"{p50:.1f}", "p80_us": f"{p80:.1f}",
                                 "graph_us": f"{graph:.1f}", **meta})
                    print(f"{kernel:16s} {dtype:34s} S={streams:<3d} {provider:6s} p50 {p50:9.1f} µs  "
                          f"graph {graph:9.1f} µs")
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
