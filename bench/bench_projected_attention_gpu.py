"""Issue 22, few streams: the slot attention with K and V projected inside its launch against the cuBLAS K/V product and the slot attention.

    PYTHONPATH=$PWD python bench/bench_projected_attention_gpu.py [--streams 1 2 4 8 16] [--out DIR]

Attention alone at the step's sizes (bf16 coefficients [S, 256, 768], bf16 projections 768 → 768,
12 heads, 32 queries, the exact preset's slot weights): the step's two launches today
(``ops.step._project_pair``, cuBLAS, then ``slot_attention``) against
``kernels/projected_attention.py`` at each tile of a small sweep, GPU time of the calls replayed
from a CUDA graph (``harness.gpu_time(graph=True)``: kernels and the workspace's memset, no host),
each context's error against float64 on K/V rounded as the kernels round them. Then the whole
memory step (bf16 tokens [S, 256, 32, 768], memory full, ``check_finite=False``) in a user's CUDA
graph with ``ops.step.PROJECTED_ATTENTION_STREAMS`` at 0 (off) and at S (on), the rows taking
turns. Prints a markdown table and writes projected_attention.md into --out.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
from pathlib import Path

import torch
from torch import nn

from bench_step_gpu import BASIS, HEADS, LENGTH, QUERIES, SAMPLES, TOKENS, WIDTH
from infvideo import LongTermMemory, backends
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.ops import step as step_module
from infvideo.ops.slot_attention import slot_attention_unchecked
from infvideo.reference import attention as ref_attention
from infvideo.reference.fit import on_device

SWEEP = [dict(block_n=bn, block_e=be, num_warps=w, num_stages=st)
         for bn, be, w, st in itertools.product((16, 32, 64), (64, 128), (4, 8), (2, 3))]


def attention_rows(streams: int, budget: float) -> list[tuple[str, float, float]]:
    torch.manual_seed(streams)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    coef = torch.randn(streams, BASIS, WIDTH, device="cuda").to(torch.bfloat16)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda").to(torch.bfloat16)
    const = ref_attention.attention_constants(MemoryConfig(num_basis=BASIS))
    log_weight = None if const.log_weight is None else const.log_weight.cuda().float()
    null = None if const.null_log_weight is None else float(const.null_log_weight)
    keys, values = (nn.functional.linear(coef.double(), p.weight.double(), p.bias.double()).bfloat16()
                    for p in (pk, pv))
    d = WIDTH // HEADS

    def heads(t):
        return t.double().reshape(streams, -1, HEADS, d).transpose(1, 2)
    r = ref_attention.slot_weights(heads(query) @ heads(keys).transpose(-1, -2) / math.sqrt(d),
                                   on_device(const, torch.device("cuda"), torch.float64))
    exact = (r @ heads(values)).transpose(1, 2).reshape(streams, QUERIES, WIDTH)

    def rel(out):
        return float((out.double() - exact).norm() / exact.norm())

    def two_launches():
        k, v = step_module._project_pair(pk, pv, coef, backend="triton")
        return slot_attention_unchecked(query, k, v, HEADS, log_weight, null, "triton")[0]

    kernel = backends.triton_kernels()["projected_attention"]

    def one_launch():
        return kernel.projected_slot_attention(query, coef, pk.weight, pk.bias, pv.weight, pv.bias, HEADS,
                                               log_weight, null)[0]
    rows = [("cuBLAS K/V + slot attention", harness.percentiles(harness.gpu_time(two_launches, budget, True))[1],
             rel(two_launches()))]
    base = dict(kernel.CONFIG)
    for tiles in SWEEP:
        kernel.CONFIG.update(tiles)
        try:
            rows.append((f"one launch {tiles}", harness.percentiles(harness.gpu_time(one_launch, budget, True))[1],
                         rel(one_launch())))
        except Exception as exc:  # a tile that does not compile (registers, shared memory)
            print(f"S={streams} {tiles}: {type(exc).__name__}", flush=True)
        finally:
            kernel.CONFIG.update(base)
    return rows


def step_rows(streams: int, budget: float, rounds: int = 3) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    timings = {"off": [], "on": []}
    with torch.no_grad():
        for _, switch in itertools.product(range(rounds), ("off", "on")):
            step_module.PROJECTED_ATTENTION_STREAMS = streams if switch == "on" else 0
            try:
                memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton", check_finite=False,
                                        cuda_graphs=False).cuda()
                for _ in range(2):
                    memory(tokens, query, pk, pv, HEADS)
                timings[switch] += harness.gpu_time(lambda: memory(tokens, query, pk, pv, HEADS), budget, True)
            finally:
                step_module.PROJECTED_ATTENTION_STREAMS = 4
    return [(f"memory step in a user's CUDA graph, one launch {switch}", harness.percentiles(t)[1], float("nan"))
            for switch, t in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    lines = [f"GPU {harness.device_name(torch.device('cuda'))}, torch {torch.__version__}, commit {harness.commit()}",
             "", "| S | what | µs (CUDA graph) | error vs float64 |", "|---|---|---|---|"]
    for streams in args.streams:
        for what, us, err in attention_rows(streams, args.budget) + step_rows(streams, args.budget):
            lines.append(f"| {streams} | {what} | {us:,.1f} | {err:.1e} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "projected_attention.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
