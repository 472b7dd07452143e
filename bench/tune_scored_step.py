"""Tiles of the scored step's two passes (``kernels/scored_consolidate.py``, issue 22) on the GPU,
against the ops they replace (fused consolidation, K/V projection, slot attention).

    PYTHONPATH=$PWD python bench/tune_scored_step.py [--streams 64] [--projections bf16 fp32]

S streams of bf16 tokens [S, 256, 32, 768], N = 256, M = 512 sticky quantile samples, 12 heads,
32 queries. Per projection dtype: the ops' time, then the two passes per pass-1 tile
(``CONFIG``: bins per program, slice of e, warps, score tiles), then per pass-2 tile with the best
pass 1; each with the context's error against the ops' context. Last, CUDA time per kernel of the
best configuration. do_bench p50 µs.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing
from torch import nn

import infvideo.ops as ops
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.kernels import scored_consolidate
from infvideo.ops.rect_consolidate import kernel_inputs
from infvideo.ops.step import step_constants

LENGTH, TOKENS, WIDTH, BASIS, SAMPLES, HEADS, QUERIES = 256, 32, 768, 256, 512, 12, 32
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PASS1 = dict(block_n=(16, 32, 64), block_e=(128, 256), warps=(4, 8))
PASS2 = dict(read_groups=(1, 2), read_block_n=(32, 64, 128), read_block_e=(32, 64), read_warps=(4, 8))


def us(fn) -> float:
    return triton.testing.do_bench(fn, return_mode="median") * 1e3


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def sweep(space: dict, run, want, label: str) -> dict:
    """Times ``run`` for each configuration of ``space`` (on top of the current CONFIG); keeps the best."""
    best, best_us = dict(scored_consolidate.CONFIG), float("inf")
    for values in itertools.product(*space.values()):
        config = dict(best, **dict(zip(space, values)))
        scored_consolidate.CONFIG.update(config)
        try:
            t = us(run)
            print(f"  {label} {dict(zip(space, values))}: {t:8.1f} us  err {rel(run()[0], want):.1e}", flush=True)
        except Exception as err:  # a tile the compiler rejects is reported, not fatal
            print(f"  {label} {dict(zip(space, values))}: failed {type(err).__name__}: {str(err)[:120]}", flush=True)
            continue
        if t < best_us:
            best, best_us = config, t
    scored_consolidate.CONFIG.update(best)
    print(f"  best {label}: {best_us:.1f} us with {best}", flush=True)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--projections", choices=sorted(DTYPES), nargs="+", default=["bf16", "fp32"])
    args = parser.parse_args()
    s = args.streams
    consts = step_constants(MemoryConfig(num_basis=BASIS, past_samples=SAMPLES), LENGTH, torch.device("cuda"))
    plan = consts.later_plan
    torch.manual_seed(0)
    frames = torch.randn(s, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    past = torch.randn(s, BASIS, WIDTH, device="cuda")
    bins = ops.quantile_bins(torch.rand(s, 24, BASIS, device="cuda"), SAMPLES)
    default = dict(scored_consolidate.CONFIG)
    for name in args.projections:
        dtype = DTYPES[name]
        pk, pv = nn.Linear(WIDTH, WIDTH).cuda().to(dtype), nn.Linear(WIDTH, WIDTH).cuda().to(dtype)
        query = torch.randn(s, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
        frames4, past4, bins4 = kernel_inputs(frames, past, bins)

        def by_ops():
            coef = ops.rect_consolidate(frames, past, plan, bins)
            keys, values = (p(coef.to(dtype)) for p in (pk, pv))
            return ops.slot_attention(query, keys, values, HEADS, consts.slot_log_weight, consts.null_log_weight)

        def run():
            return scored_consolidate.scored_step(
                frames4, past4, bins4, plan.past_idx, plan.past_start, plan.frame_idx, plan.frame_start, plan.scale,
                plan.frames_in_order, plan.max_per_bin, query, pk.weight, pk.bias, pv.weight, pv.bias, HEADS,
                consts.slot_log_weight, consts.null_log_weight)

        with torch.no_grad():
            want = by_ops()[0]
            print(f"S={s} {name} projections: consolidation + K/V + slot attention {us(by_ops):8.1f} us", flush=True)
            scored_consolidate.CONFIG.update(default)
            sweep(PASS1, run, want, "pass 1")
            sweep(PASS2, run, want, "pass 2")
            print(harness.kernel_times(run), flush=True)


if __name__ == "__main__":
    main()
