"""The README's speed table: one LTM step of one layer on one GPU, every way of running it, against S.

    PYTHONPATH=$PWD python bench/bench_step_gpu.py --out DIR [--streams 1 4 16 64] [--budget 0.2] [--timer latency]
    PYTHONPATH=$PWD python bench/bench_step_gpu.py --from-csv DIR/step.csv --out DIR   # table and plot only

Step: S streams, L = 256 frames of 32 Video-LLaMA tokens each (bf16, pooled inside), N = 256,
M = 512, e = D = 768, 12 heads, 32 queries, sticky quantile sampling, bf16 projections; the
memory is full (two steps before the timing). Providers: the published code's cost structure
(``infvideo/benchmarks/published.py``, fp32, at S ≤ ``--baseline-max-streams``), the torch
reference, the default ``LongTermMemory()`` (Triton replayed from the memory's CUDA graphs, the
NaN/Inf check asynchronous), Triton launched from Python (``cuda_graphs=False``), the csrc CUDA
kernels from the memory's graphs (where the extension has them), and the step captured in a user's
CUDA graph. GPU time per
call from ``triton.testing.do_bench`` (a host-bound step shows its host time: the GPU waits for the
launches) or ``do_bench_cudagraph`` (the user's graph: kernels only); with ``--timer latency``,
the wall-clock time per call that a caller waiting for each step sees (``harness.call_latency``:
blocks of 10 calls, one synchronisation per block; the user's graph is replayed the same way). The floor is the time to read the step's inputs and the memory's state
once at the measured read bandwidth. Writes step.csv, step.md and step.png into --out.
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import torch
from torch import nn

from infvideo import LongTermMemory, available_backends
from infvideo.benchmarks import harness
from infvideo.benchmarks.published import published_step
from infvideo.plot import line_charts

LENGTH, TOKENS, BASIS, SAMPLES, WIDTH, HEADS, QUERIES = 256, 32, 256, 512, 768, 12, 32
MEMORIES = {  # provider: LongTermMemory options
    "torch reference": dict(backend="torch"),
    "LongTermMemory() (default)": {},
    "Triton, Python launches (cuda_graphs=False)": dict(backend="triton", cuda_graphs=False),
    "csrc CUDA, memory's CUDA graphs": dict(backend="cuda"),
}
BASELINE, USER_GRAPH, FLOOR = "published-cost baseline", "Triton in a user's CUDA graph", "input + state read floor"


def inputs(streams: int):
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    return pk, pv, tokens, query


def read_bandwidth() -> float:
    """Bytes/s read by a 2 GiB reduction (median call)."""
    big = torch.empty(2**30, dtype=torch.bfloat16, device="cuda").normal_()
    times = harness.gpu_time(lambda: big.sum(dtype=torch.float32), budget_s=0.2)
    return big.numel() * big.element_size() / (sorted(times)[len(times) // 2] * 1e-6)


def floor_us(streams: int, tensors, bandwidth: float) -> float:
    """µs to read the step's inputs and the memory's state (coefficients [S, N, e] and the sticky
    statistic [S, H·⌈Q/16⌉, N], float32) once."""
    state = streams * (BASIS * WIDTH + HEADS * 2 * BASIS) * 4
    return (sum(t.numel() * t.element_size() for t in tensors) + state) / bandwidth * 1e6


def user_graph(step):
    """A CUDA graph of one ``step()`` (run eagerly first, as the memory requires); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def measure(streams: int, args, bandwidth: float, baseline: bool = False) -> list[dict]:
    """The rows of one stream count; with ``baseline``, the published-cost baseline's row alone."""
    pk, pv, tokens, query = inputs(streams)
    rows = []
    if args.timer == "latency":
        def timed(fn, budget, graph=False):
            return harness.call_latency(user_graph(fn) if graph else fn, torch.device("cuda"), budget)
    else:
        timed = harness.gpu_time

    def add(provider, times):
        p20, p50, p80 = harness.percentiles(times)
        rows.append(dict(S=streams, provider=provider, p20_us=p20, p50_us=p50, p80_us=p80, timer=args.timer))
        print(f"  S={streams:<3d} {provider:46s} p50 {p50:12,.1f} µs", flush=True)

    with torch.no_grad():
        for provider, options in ({} if baseline else MEMORIES).items():
            if options.get("backend", "auto") not in ("auto", *available_backends()):
                continue
            memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, **options).cuda()
            for _ in range(2):
                memory(tokens, query, pk, pv, HEADS)
            add(provider, timed(lambda: memory(tokens, query, pk, pv, HEADS), args.budget))
            del memory
        if baseline:
            pooled, past = tokens.float().mean(2), torch.randn(streams, BASIS, WIDTH, device="cuda")
            pkf, pvf, qf = pk.float(), pv.float(), query.float()
            add(BASELINE, timed(lambda: published_step(pooled, past, qf, pkf, pvf, HEADS), 0))
            return rows
        memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="triton", check_finite=False,
                                cuda_graphs=False).cuda()  # the user's graph alone
        for _ in range(2):  # eager steps first; the graph then drives the memory alone
            memory(tokens, query, pk, pv, HEADS)
        try:
            add(USER_GRAPH, timed(lambda: memory(tokens, query, pk, pv, HEADS), args.budget / 4, graph=True))
        except RuntimeError as err:  # reported, not fatal: the other rows still count
            print(f"  S={streams}: CUDA graph capture failed: {err}", flush=True)
    floor = floor_us(streams, [tokens, query, pk.weight, pv.weight], bandwidth)
    rows.append(dict(S=streams, provider=FLOOR, p20_us=floor, p50_us=floor, p80_us=floor, timer=args.timer))
    return rows


def report(rows: list[dict], meta: dict, out: Path) -> None:
    """step.md (one row per provider, one column per S, p50 µs) and step.png."""
    sizes = sorted({r["S"] for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cell = {(r["provider"], r["S"]): r["p50_us"] for r in rows}
    table = harness.markdown_table(["provider", *[f"S={s}" for s in sizes]],
                                   [[p, *[cell.get((p, s)) for s in sizes]] for p in providers])
    latency = rows[0].get("timer") == "latency"
    measure_name = "wall-clock µs per eager call" if latency else "GPU µs per step (do_bench)"
    harness.write_markdown(out / "step.md", f"One LTM step, L={LENGTH} bf16 tokens ×{TOKENS} per frame, N={BASIS}, "
                           f"M={SAMPLES}, e=D={WIDTH}, {HEADS} heads, {QUERIES} queries: p50 {measure_name}", table, meta)
    lines = {p: ([s for s in sizes if (p, s) in cell], [cell[p, s] for s in sizes if (p, s) in cell])
             for p in providers if p != FLOOR}
    floor = ([s for s in sizes if (FLOOR, s) in cell], [cell[FLOOR, s] for s in sizes if (FLOOR, s) in cell])
    if line_charts(str(out / "step.png"), [dict(
            title=f"one memory step on {meta['device']}", xlabel="streams S (videos in the batch)",
            ylabel=("time per eager call" if latency else "GPU time per step") + ", p50 (µs)", lines=lines, floor=floor if floor[0] else None)],
            suptitle=f"L={LENGTH} bf16 frames, N={BASIS}, M={SAMPLES}, e=D={WIDTH}"):
        print(f"wrote {out / 'step.png'}")


def read_csv(path: str) -> tuple[list[dict], dict]:
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    rows = [dict(S=int(r["S"]), provider=r["provider"], timer=r.get("timer") or "do_bench",
                 **{k: float(r[k]) for k in ("p20_us", "p50_us", "p80_us")}) for r in records]
    return rows, {k: records[0][k] for k in ("device", "torch", "triton", "commit")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per row")
    parser.add_argument("--timer", choices=("do_bench", "latency"), default="do_bench",
                        help="GPU time per call (do_bench), or wall-clock latency per call")
    parser.add_argument("--baseline-max-streams", type=int, default=4,
                        help="the published-cost baseline runs one stream at a time (~70 ms each): skip it above")
    parser.add_argument("--from-csv", default=None, help="measure nothing: table and plot from a step.csv")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        report(*read_csv(args.from_csv), out)
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_step_gpu.py needs a GPU")
    device = torch.device("cuda")
    meta = harness.metadata(device)
    bandwidth = read_bandwidth()
    print(f"{meta}; read bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows = []
    for streams in args.streams:
        rows += measure(streams, args, bandwidth)
        torch.cuda.empty_cache()
    # The baselines last: their CPU solve leaves the host's thread pool busy for a while, which
    # slows host-bound rows measured after it.
    for streams in [s for s in args.streams if s <= args.baseline_max_streams]:
        rows += measure(streams, args, bandwidth, baseline=True)
    harness.write_csv(out / "step.csv", rows, meta)
    report(rows, meta, out)


if __name__ == "__main__":
    main()
