"""Issue 22: the many-stream step as chunks of videos on several CUDA streams, against the whole step.

One chunk's K/V product and attention could run beside the next chunk's consolidation.

    PYTHONPATH=$PWD python bench/overlap_streams_gpu.py [--streams 64] [--budget 0.2]

A full memory (two steps first), bf16 tokens [S, 256, 32, 768], bf16 projections, sticky quantile
sampling: ``ops.step.fused_step`` on all S videos at once, against the same step as C chunks of
S/C videos (each chunk's quantile bins, consolidation, K/V product and slot attention) issued one
after another onto K CUDA streams in turn and joined at the end; with K = 1 the chunks run one
after another. The "+ cat" rows also gather the chunks' outputs into whole tensors (what the
memory's state needs). GPU time p50 of the work replayed from a CUDA graph (``do_bench_cudagraph``),
all rows in one run; each chunked result's largest difference from the whole step's.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH
from infvideo import LongTermMemory
from infvideo.benchmarks import harness
from infvideo.ops import step_constants
from infvideo.ops.step import fused_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.2)
    args = parser.parse_args()
    s = args.streams
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    tokens = torch.randn(s, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(s, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton", check_finite=False,
                            cuda_graphs=False).cuda()
    with torch.no_grad():
        for _ in range(2):
            memory(tokens, query, pk, pv, HEADS)
    cfg, past, stats = memory.config, memory.coef.clone(), memory.sticky_stats.clone()
    consts = step_constants(cfg, LENGTH, tokens.device)

    def step(videos: slice):
        return fused_step(cfg, consts, tokens[videos], query[videos], pk, pv, HEADS, past[videos], None,
                          stats[videos], None, keep_stats=True, backend="triton")

    side_streams = [torch.cuda.Stream() for _ in range(4)]

    def chunked(chunks: int, streams: int, cat: bool):
        size = s // chunks
        main = torch.cuda.current_stream()
        used = side_streams[:streams]
        for side in used:
            side.wait_stream(main)
        outs = []
        for i in range(chunks):
            with torch.cuda.stream(used[i % streams]):
                outs.append(step(slice(i * size, (i + 1) * size)))
        for side in used:
            main.wait_stream(side)
        return [torch.cat(parts) for parts in zip(*outs)] if cat else outs

    with torch.no_grad():
        whole = step(slice(None))
        rows = [("whole step", harness.percentiles(harness.gpu_time(lambda: step(slice(None)), args.budget, True))[1],
                 0.0)]
        for chunks, streams, cat in [(2, 1, False), (2, 2, False), (4, 1, False), (4, 2, False), (4, 3, False),
                                     (4, 4, False), (8, 2, False), (8, 4, False), (2, 2, True), (4, 2, True),
                                     (4, 4, True)]:
            if s % chunks:
                continue
            out = chunked(chunks, streams, True)
            torch.cuda.synchronize()
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(out, whole))
            us = harness.percentiles(harness.gpu_time(lambda: chunked(chunks, streams, cat), args.budget, True))[1]
            rows.append((f"{chunks} chunks on {streams} CUDA stream(s){' + cat' if cat else ''}", us, diff))
    print(f"S={s}, GPU {harness.device_name(torch.device('cuda'))}, commit {harness.commit()}\n")
    print("| step | µs (CUDA graph) | vs whole | largest difference |\n|---|---|---|---|")
    for what, us, diff in rows:
        print(f"| {what} | {us:,.1f} | {us / rows[0][1]:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
