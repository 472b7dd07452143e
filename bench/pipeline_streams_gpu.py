"""Issue 22: the many-stream step pipelined, each chunk's projections and attention on a second CUDA
stream beside the next chunk's consolidation.

    PYTHONPATH=$PWD python bench/pipeline_streams_gpu.py [--streams 64 16] [--chunks 2 4 8] [--budget 0.2]
        [--timeline CHUNKS]

A full memory (two steps first), bf16 tokens [S, 256, 32, 768], sticky quantile sampling, bf16 or
float32 projections. "whole": ``ops.step.fused_step`` on all S videos. "pipelined C": the videos in
C chunks; the main CUDA stream runs every chunk's quantile bins and consolidation one after another,
and a second stream, which waits on an event after each chunk's consolidation, that chunk's
projections and attention (the K/V product and slot attention; with float32 projections also
the folded attention, in rows of their own), then the chunks' outputs are gathered (context, mass and
coefficients: the coefficients' gather is the copy that a memory's commit makes anyway, into its
buffer). The second stream runs at the highest priority, so that its blocks are scheduled ahead of
the consolidation's as the GPU's multiprocessors free up, or at the default priority. GPU time p50
of the work replayed from a CUDA graph (torch instantiates graphs with node priorities), all rows
in one run; each result's largest difference from the whole step's.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH
from profile_step_gpu import graph_timeline
from infvideo import LongTermMemory
from infvideo.benchmarks import harness
from infvideo.ops import factored_attention, step_constants
from infvideo.ops.slot_attention import slot_attention_unchecked
from infvideo.ops.step import _fused_consolidation, _project_pair, fused_step


def setup(s: int, weight_dtype: torch.dtype):
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(weight_dtype)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(weight_dtype)
    tokens = torch.randn(s, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(s, QUERIES, WIDTH, device="cuda", dtype=weight_dtype)
    memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton", check_finite=False,
                            cuda_graphs=False).cuda()
    with torch.no_grad():
        for _ in range(2):
            memory(tokens, query, pk, pv, HEADS)
    return pk, pv, tokens, query, memory.config, memory.coef.clone(), memory.sticky_stats.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--timeline", type=int, nargs="*", default=[],
                        help="print one replay's kernels of the pipelined step with these chunk counts")
    args = parser.parse_args()
    high = torch.cuda.Stream(priority=-100)  # mapped to the device's highest priority
    normal = torch.cuda.Stream()
    print(f"GPU {harness.device_name(torch.device('cuda'))}, commit {harness.commit()}, "
          f"stream priorities {torch.cuda.Stream.priority_range()}\n")
    for weight_dtype in (torch.bfloat16, torch.float32):
        for s in args.streams:
            pk, pv, tokens, query, cfg, past, stats = setup(s, weight_dtype)
            consts = step_constants(cfg, LENGTH, tokens.device)

            def whole():
                return fused_step(cfg, consts, tokens, query, pk, pv, HEADS, past, None, stats, None,
                                  keep_stats=True, backend="triton")

            def attend(v, coef, projected, folded):
                if folded:
                    return factored_attention.factored_slot_attention(query[v], coef, pk, pv, HEADS,
                                                                      consts.slot_log_weight, "triton")
                keys, values = _project_pair(pk, pv, projected, False, "triton")
                return slot_attention_unchecked(query[v], keys, values, HEADS, consts.slot_log_weight,
                                                consts.null_log_weight, "triton")

            def pipelined(chunks, side, folded, overlap=True):
                size, main = s // chunks, torch.cuda.current_stream()
                contexts, masses, coefs = [], [], []
                for i in range(chunks):
                    v = slice(i * size, (i + 1) * size)
                    coef, projected = _fused_consolidation(cfg, consts, tokens[v], past[v], None, stats[v], None,
                                                           weight_dtype, "triton")
                    coefs.append(coef)
                    if overlap:
                        side.wait_stream(main)
                        with torch.cuda.stream(side):
                            context, mass = attend(v, coef, projected, folded)
                    else:
                        context, mass = attend(v, coef, projected, folded)
                    contexts.append(context)
                    masses.append(mass)
                if overlap:
                    main.wait_stream(side)
                return torch.cat(contexts), torch.cat(coefs), torch.cat(masses)

            with torch.no_grad():
                reference = whole()
                rows = [("whole step", harness.percentiles(harness.gpu_time(whole, args.budget, True))[1], 0.0)]
                folds = (False, True) if weight_dtype == torch.float32 else (False,)
                for chunks in args.chunks:
                    if s % chunks:
                        continue
                    for folded in folds:
                        label = " folded" if folded else ""
                        for name, kwargs in ((f"{chunks} chunks, one stream{label}", dict(side=None, overlap=False)),
                                             (f"pipelined {chunks}, side stream high priority{label}", dict(side=high)),
                                             (f"pipelined {chunks}, side stream default priority{label}",
                                              dict(side=normal))):
                            fn = lambda: pipelined(chunks, folded=folded, **kwargs)  # noqa: E731
                            out = fn()
                            torch.cuda.synchronize()
                            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(out, reference))
                            us = harness.percentiles(harness.gpu_time(fn, args.budget, True))[1]
                            rows.append((name, us, diff))
                print(f"S={s}, {str(weight_dtype)[6:]} projections\n")
                print("| step | µs (CUDA graph) | vs whole | largest difference |\n|---|---|---|---|")
                for what, us, diff in rows:
                    print(f"| {what} | {us:,.1f} | {us / rows[0][1]:.2f} | {diff:.1e} |")
                print()
                for chunks in args.timeline:
                    if s % chunks == 0:
                        print(f"timeline, pipelined {chunks}, high priority:")
                        print(graph_timeline(lambda: pipelined(chunks, high, weight_dtype == torch.float32)))
                        print()


if __name__ == "__main__":
    main()
