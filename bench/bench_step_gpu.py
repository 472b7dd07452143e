"""GPU benchmark of one LTM step (issue: fused Triton kernels). Writes CSV rows and prints a table.

    python bench/bench_step_gpu.py [--out DIR] [--quick]

Rows: (case, provider, p20/p50/p80 µs). Providers: published-cost baseline (bench/published_baseline),
torch reference, the default memory, Triton launched from Python, Triton and csrc CUDA through the
memory's own CUDA graphs, and the whole Triton step captured in a CUDA graph by the caller.
The S=64 case also gives the time to read the step's inputs once (bytes / measured read bandwidth).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from published_baseline import published_step  # noqa: E402

from infvideo import LongTermMemory, available_backends  # noqa: E402

WIDTH, MODEL, HEADS, QUERIES = 768, 768, 12, 32


def wall_per_call(fn, iters: int, warmup: int = 10) -> list[float]:
    """Per-call wall times (µs) of back-to-back calls, synchronising only around each block of 10."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(1, iters // 10)):
        start = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 10 * 1e6)
    return sorted(times)


def pct(times):
    return tuple(times[int(q * (len(times) - 1))] for q in (0.2, 0.5, 0.8))


def graph_per_call(memory, frames, query, pk, pv, iters: int) -> list[float]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            memory(frames, query, pk, pv, HEADS)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        memory(frames, query, pk, pv, HEADS)
    return wall_per_call(graph.replay, iters)


def read_floor_us(tensors) -> tuple[float, float]:
    """(µs to read the tensors once, bytes/s) at the bandwidth of a 2 GiB reduction."""
    big = torch.empty(2**30, dtype=torch.bfloat16, device="cuda").normal_()
    times = wall_per_call(lambda: big.sum(dtype=torch.float32), 30, warmup=3)
    bandwidth = big.numel() * big.element_size() / (pct(times)[1] * 1e-6)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return nbytes / bandwidth * 1e6, bandwidth


def make(streams, length, dtype=torch.float32, tokens=None):
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, MODEL).cuda().to(dtype)
    pv = nn.Linear(WIDTH, MODEL).cuda().to(dtype)
    shape = (streams, length, tokens, WIDTH) if tokens else (streams, length, WIDTH)
    frames = torch.randn(shape, device="cuda", dtype=dtype)
    query = torch.randn(streams, QUERIES, MODEL, device="cuda", dtype=dtype)
    return pk, pv, frames, query


def step_rows(case, streams, length, dtype, tokens, iters, extra=(), baseline=True, **memory_kwargs):
    pk, pv, frames, query = make(streams, length, dtype, tokens)
    rows = []
    with torch.no_grad():
        if baseline:
            pooled = frames.float().mean(2) if tokens else frames.float()
            past = torch.randn(streams, 256, WIDTH, device="cuda")
            pkf, pvf = pk.float(), pv.float()
            times = wall_per_call(lambda: published_step(pooled, past, query.float(), pkf, pvf, HEADS), 5, warmup=1)
            rows.append((case, "published-cost baseline", *pct(times)))
        for provider, kwargs in (("torch reference", dict(backend="torch")),
                                 ("default LongTermMemory() (asynchronous check, CUDA graphs)", dict()),
                                 ("triton, check_finite=False, cuda_graphs=False (Python launches)",
                                  dict(backend="triton", check_finite=False, cuda_graphs=False)),
                                 ("triton, eager call, check_finite=False, cuda_graphs=True",
                                  dict(backend="triton", check_finite=False)),
                                 *((("cuda (csrc), eager call, cuda_graphs=True", dict(backend="cuda")),)
                                   if "cuda" in available_backends() else ())):
            memory = LongTermMemory(**memory_kwargs, **kwargs).cuda()
            times = wall_per_call(lambda: memory(frames, query, pk, pv, HEADS), iters)
            rows.append((case, provider, *pct(times)))
    memory = LongTermMemory(**memory_kwargs, backend="triton", cuda_graphs=False).cuda()
    try:
        rows.append((case, "triton, CUDA graph", *pct(graph_per_call(memory, frames, query, pk, pv, iters))))
    except RuntimeError as err:  # reported, not fatal: the other rows still count
        print(f"{case}: CUDA graph capture failed: {err}", flush=True)
    for row in extra:
        rows.append((case, *row))
    for row in rows:
        print("| %s | %s | %.1f | %.1f | %.1f |" % row, flush=True)
    return rows


def quadrature_rows(iters):
    """Gaussian-basis attention alone at S=16, T=1000: the published quadrature (materialising
    [S, H, Q, N, T]) against the reference's matmul quadrature and the fused Triton kernel."""
    import math

    import infvideo.ops as ops
    from infvideo.config import MemoryConfig
    from infvideo.reference.attention import attention_constants, quadrature_weights
    from infvideo.reference.fit import on_device
    cfg = MemoryConfig(basis="gaussian", quad_points=1000)
    s, n, d = 16, 256, MODEL // HEADS
    torch.manual_seed(0)
    query = torch.randn(s, QUERIES, MODEL, device="cuda")
    keys = torch.randn(s, n, MODEL, device="cuda") * 0.05
    values = torch.randn(s, n, MODEL, device="cuda")
    const = on_device(attention_constants(cfg), torch.device("cuda"), torch.float32)
    quad = ops.quadrature_constants(cfg, torch.device("cuda"))
    qh = query.view(s, QUERIES, HEADS, d).transpose(1, 2) / math.sqrt(d)
    kh = keys.view(s, n, HEADS, d).transpose(1, 2)
    vh = values.view(s, n, HEADS, d).transpose(1, 2)

    def published():
        scores = torch.einsum("shqd,shnd,tn->shqt", qh, kh, const.basis)
        prob = torch.exp(scores) / torch.trapz(torch.exp(scores), quad.grid, dim=-1)[..., None]
        integrand = prob[:, :, :, None, :] * const.basis.T[None, None, None]
        return torch.trapz(integrand, quad.grid, dim=-1) @ vh

    def matmul():
        r, _ = quadrature_weights(qh @ kh.transpose(-1, -2), const)
        return r @ vh

    def fused():
        return ops.quadrature_attention(query, keys, values, HEADS, quad.mu, quad.sigma, quad.grid, quad.log_weight)

    case = "S=16 gaussian attention only"
    rows = []
    with torch.no_grad():
        for name, fn, count in (("published quadrature [S,H,Q,N,T]", published, 5), ("torch matmul quadrature", matmul, iters),
                                ("triton fused quadrature", fused, iters)):
            rows.append((case, name, *pct(wall_per_call(fn, count, warmup=2))))
            print("| %s | %s | %.1f | %.1f | %.1f |" % rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    iters = 50 if args.quick else 200
    rows = []
    rows += step_rows("S=1 L=256 pooled fp32", 1, 256, torch.float32, None, iters)
    rows += step_rows("S=1 L=256 tokens bf16", 1, 256, torch.bfloat16, 32, iters, baseline=False)
    pk, pv, frames, query = make(64, 256, torch.bfloat16, 32)
    floor, bandwidth = read_floor_us([frames, query, pk.weight, pv.weight])
    # The step also reads the memory's state: old coefficients [S, N, e] fp32 and the sticky
    # statistic [S, H·⌈Q/16⌉, N] fp32.
    state = [torch.empty(64, 256, WIDTH, device="cuda"), torch.empty(64, HEADS * 2, 256, device="cuda")]
    state_floor = floor + sum(t.numel() * t.element_size() for t in state) / bandwidth * 1e6
    del frames, state
    torch.cuda.empty_cache()
    rows += step_rows("S=64 L=256 tokens bf16", 64, 256, torch.bfloat16, 32, max(20, iters // 4),
                      extra=[("input read floor (%.0f GB/s)" % (bandwidth / 1e9), floor, floor, floor),
                             ("input read floor with the memory's state", state_floor, state_floor, state_floor)],
                      baseline=False)
    rows += step_rows("S=16 gaussian T=1000", 16, 256, torch.float32, None, max(20, iters // 4), baseline=False,
                      basis="gaussian", quad_points=1000)
    rows += quadrature_rows(max(20, iters // 4))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                triton=__import__("triton").__version__,
                commit=os.environ.get("INFVIDEO_COMMIT") or commit or "unknown")  # the device copy may lack .git
    path = os.path.join(args.out, "bench_step_gpu.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "provider", "p20_us", "p50_us", "p80_us", *meta])
        for row in rows:
            writer.writerow([*row[:2], *("%.1f" % v for v in row[2:]), *meta.values()])
    print(f"{meta}")
    print("| case | provider | p20 µs | p50 µs | p80 µs |\n|---|---|---|---|---|")
    for case, provider, p20, p50, p80 in rows:
        print(f"| {case} | {provider} | {p20:.1f} | {p50:.1f} | {p80:.1f} |")


if __name__ == "__main__":
    main()
