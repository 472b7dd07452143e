"""Issue 18: the Gaussian basis's continuous attention on the GPU, the fused op against the torch two-product quadrature.

    PYTHONPATH=$PWD python bench/bench_quadrature_gpu.py --out DIR [--streams 16 64] [--budget 0.2]

Attention alone (S = 16, N = 256, T = 1,000 nodes of the exact preset's Gauss–Legendre panels, 12
heads, 32 queries, e = D = 768; query, keys and values in float32 and in bfloat16): the torch
reference (a = qKᵀ/√d, then the two products a·ψᵀ and p·ψ over [S, H, Q, T] and the sticky
density) and the fused op (ψ from a table, banded tile products: ``kernels/quadrature_table.py``);
each context's error against the same attention in float64 on the same nodes and basis; GPU time
of eager calls and of the same call replayed from a CUDA graph (no host time). Then the eager
Gaussian step (bf16 tokens [S, 256, 32, 768], bf16 projections, sticky quantile sampling, the
memory full): the torch reference step, the Triton step with its quadrature on torch products
(``QUADRATURE_KERNEL`` off) and on the fused op (its default), all launched from Python
(``cuda_graphs=False``), and the Triton step with default settings (replayed from the memory's
CUDA graph where the chunk fits ``graphs.MAX_INPUT_BYTES``, its frames copied in). GPU time per
call from ``harness.gpu_time`` (do_bench). Writes quadrature.csv and quadrature.md into --out.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from torch import nn

from infvideo import LongTermMemory
from infvideo import ops
from infvideo.benchmarks import harness
from infvideo.config import MemoryConfig
from infvideo.ops import step as step_module
from infvideo.reference import attention as ref_attention
from infvideo.reference.fit import on_device

LENGTH, TOKENS, BASIS, SAMPLES, WIDTH, HEADS, QUERIES, POINTS = 256, 32, 256, 512, 768, 12, 32, 1000
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def float64_rule(quad) -> ref_attention.Quadrature:
    """The reference's quadrature constants in float64 on the nodes, weights and basis the kernels
    see (their float32 constants, upcast): what the kernels' own arithmetic is measured against."""
    mu, sigma, grid, log_weight = (x.double() for x in (quad.mu, quad.sigma, quad.grid, quad.log_weight))
    psi = torch.exp(-0.5 * ((grid[:, None] - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return ref_attention.Quadrature(psi, log_weight, None)


def quadrature_context(const: ref_attention.Quadrature, query, keys, values, dtype):
    """(context [S, Q, D], density) of the reference quadrature on ``const``, computed in ``dtype``."""
    s, q_len, model = query.shape
    d = model // HEADS

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, d).transpose(1, 2).to(dtype)
    a = heads(query) @ heads(keys).transpose(-1, -2) / math.sqrt(d)
    r, density = ref_attention.quadrature_weights(a, const)
    return (r @ heads(values)).transpose(1, 2).reshape(s, q_len, model), density


def attention_rows(streams: int, budget: float) -> list[dict]:
    cfg = MemoryConfig(num_basis=BASIS, basis="gaussian", quad_points=POINTS)
    quad = ops.quadrature_constants(cfg, torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, dtype in DTYPES.items():
        query = torch.randn(streams, QUERIES, WIDTH, device="cuda", generator=gen).to(dtype)
        keys = (torch.randn(streams, BASIS, WIDTH, device="cuda", generator=gen) * 0.05).to(dtype)
        values = torch.randn(streams, BASIS, WIDTH, device="cuda", generator=gen).to(dtype)
        exact = quadrature_context(float64_rule(quad), query, keys, values, torch.float64)[0]
        const = on_device(ref_attention.attention_constants(cfg), query.device, torch.float32)

        def two_product():
            context, density = quadrature_context(const, query, keys, values, torch.float32)
            return context.to(query.dtype), density

        def fused():
            return ops.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma, quad.grid,
                                            quad.log_weight)
        providers = {"torch two-product": two_product, "fused": fused}
        for provider, fn in providers.items():
            error = rel_err(fn()[0], exact)
            p20, p50, p80 = harness.percentiles(harness.gpu_time(fn, budget))
            graph = harness.percentiles(harness.gpu_time(fn, budget, graph=True))[1]
            rows.append(dict(what="attention", S=streams, dtype=name, provider=provider, p20_us=p20, p50_us=p50,
                             p80_us=p80, graph_us=graph, rel_err=error))
            print(f"  attention S={streams:<3d} {name} {provider:24s} p50 {p50:10,.1f} µs, "
                  f"in a graph {graph:10,.1f} µs"
                  f"  error {error:.1e}", flush=True)
    return rows


def step_rows(streams: int, budget: float) -> list[dict]:
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    # (backend, fused quadrature, the memory's own CUDA graphs); the torch reference's default
    # settings are its eager steps (the memory captures fused backends only).
    settings = {"torch reference": ("torch", False, False),
                "Triton, quadrature on torch products": ("triton", False, False),
                "Triton, fused quadrature": ("triton", True, False),
                "Triton, default settings (the memory's CUDA graphs)": ("triton", True, True)}
    rows = []
    for provider, (backend, kernel, graphs) in settings.items():
        step_module.QUADRATURE_KERNEL = kernel
        try:
            memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, basis="gaussian", quad_points=POINTS,
                                    backend=backend, cuda_graphs=graphs).cuda()
            with torch.no_grad():
                for _ in range(2):
                    memory(tokens, query, pk, pv, HEADS)
                times = harness.gpu_time(lambda: memory(tokens, query, pk, pv, HEADS), budget)
        finally:
            step_module.QUADRATURE_KERNEL = True
        p20, p50, p80 = harness.percentiles(times)
        rows.append(dict(what="step", S=streams, dtype="bf16", provider=provider, p20_us=p20, p50_us=p50,
                         p80_us=p80, graph_us=None, rel_err=None))
        print(f"  step S={streams:<3d} {provider:40s} p50 {p50:10,.1f} µs", flush=True)
    return rows


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per row")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        raise SystemExit("bench_quadrature_gpu.py needs a GPU")
    meta = harness.metadata(torch.device("cuda"))
    rows = attention_rows(16, args.budget)
    for streams in args.streams:
        rows += step_rows(streams, args.budget)
    harness.write_csv(out / "quadrature.csv", rows, meta)
    table = harness.markdown_table(["what", "S", "dtype", "provider", "p50 µs", "in a CUDA graph µs",
                                    "error vs float64"],
                                   [[r["what"], r["S"], r["dtype"], r["provider"], r["p50_us"], r["graph_us"],
                                     r["rel_err"]] for r in rows])
    harness.write_markdown(out / "quadrature.md", f"Gaussian basis, N={BASIS}, T={POINTS} (exact preset), {HEADS} "
                           f"heads, {QUERIES} queries, e=D={WIDTH}: p50 GPU µs (do_bench)", table, meta)


if __name__ == "__main__":
    main()
