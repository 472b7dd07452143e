"""One trainable LTM step of one layer on one GPU, forward and backward, every way of running it, against S.

    PYTHONPATH=$PWD python bench/bench_backward_gpu.py --out DIR [--streams 1 16 64] [--budget 0.2]
    PYTHONPATH=$PWD python bench/bench_backward_gpu.py --from-csv DIR/backward.csv --out DIR   # table and plot only

Step: S streams, L = 256 frames of 32 Video-LLaMA tokens each (bf16, pooled inside), N = 256,
M = 512, e = D = 768, 12 heads, 32 queries, sticky quantile sampling, bf16 projections whose
weights and biases require grad (as an nn.Module's do), query and tokens requiring grad (the
Q-former's query Linear and the encoder upstream); the memory is full (two steps before the
timing). One timed call is the step and ``torch.autograd.grad`` of its context against a fixed
cotangent, for the tokens, the query and the four projection parameters. Providers: the fused
ops with their registered backward (Triton forward and backward kernels; where the extension has
CUDA kernels, their forward with the backward ops' plain-torch CUDA implementation), the torch
reference, and ``torch.compile`` of the reference's step (the memory's state commit stays
outside the graph). GPU time per call from ``triton.testing.do_bench`` (eager calls: a step whose
host work outlasts its kernels shows its host time) and ``do_bench_cudagraph`` (the call
captured in a CUDA graph and replayed: the GPU's work alone), and the
peak memory one call allocates above what was allocated before it. Writes backward.csv,
backward.md and backward.png into --out.
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
from infvideo.plot import line_charts

LENGTH, TOKENS, BASIS, SAMPLES, WIDTH, HEADS, QUERIES = 256, 32, 256, 512, 768, 12, 32
MEMORIES = {  # provider: LongTermMemory options
    "fused Triton (forward + backward)": dict(backend="triton"),
    "csrc CUDA forward, backward ops in plain torch": dict(backend="cuda"),
    "torch reference": dict(backend="torch"),
}
COMPILED = "torch.compile(torch reference)"


def inputs(streams: int):
    """Projections (bf16, parameters requiring grad), tokens and query (requiring grad), and the
    context's cotangent."""
    torch.manual_seed(0)
    pk = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    pv = nn.Linear(WIDTH, WIDTH).cuda().to(torch.bfloat16)
    tokens = torch.randn(streams, LENGTH, TOKENS, WIDTH, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    query = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cotangent = torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=torch.bfloat16)
    return pk, pv, tokens, query, cotangent


def training_step(memory, pk, pv, tokens, query, cotangent):
    """A call that runs one step forward and its backward (no gradient accumulated anywhere)."""
    wrt = [tokens, query, *pk.parameters(), *pv.parameters()]

    def step():
        context = memory(tokens, query, pk, pv, HEADS)
        return torch.autograd.grad(context, wrt, cotangent)
    return step


def compiled_reference_step(pk, pv, tokens, query, cotangent):
    """The reference's step (consolidation and attention, ``infvideo.reference``) compiled with
    ``torch.compile``, its state carried between calls outside the compiled function."""
    from infvideo.reference.pooling import pool_frames
    from infvideo.reference.step import attend, consolidate_chunk

    memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, backend="torch").cuda()
    with torch.no_grad():
        for _ in range(2):
            memory(tokens, query, pk, pv, HEADS)
    cfg = memory.config
    state = {"coef": memory.coef.clone(), "stats": memory.sticky_stats.clone()}

    @torch.compile
    def forward(x, q, coef, stats):
        new = consolidate_chunk(cfg, pool_frames(x, torch.float32), coef, None, stats, None)
        context, new_stats = attend(cfg, new, q.float(), pk, pv, HEADS, keep_stats=True)
        return context.to(q.dtype), new, new_stats

    wrt = [tokens, query, *pk.parameters(), *pv.parameters()]

    def step():
        context, coef, stats = forward(tokens, query, state["coef"], state["stats"])
        state["coef"], state["stats"] = coef.detach(), stats.detach()
        return torch.autograd.grad(context, wrt, cotangent)
    return step


def measure(streams: int, args) -> list[dict]:
    pk, pv, tokens, query, cotangent = inputs(streams)
    rows = []

    def add(provider, step):
        for _ in range(2):  # compile, autotune and allocate outside the timing
            step()
        peak = harness.peak_bytes(step, torch.device("cuda"))
        p20, p50, p80 = harness.percentiles(harness.gpu_time(step, args.budget))
        try:  # the same call replayed from a CUDA graph: the GPU's work without the host's
            graph = harness.percentiles(harness.gpu_time(step, args.budget, graph=True))[1]
        except Exception as err:  # reported, not fatal: the eager row still counts
            print(f"  S={streams} {provider}: CUDA graph capture failed: {type(err).__name__}: {err}", flush=True)
            graph = None
        rows.append(dict(S=streams, provider=provider, p20_us=p20, p50_us=p50, p80_us=p80, graph_us=graph,
                         peak_mib=None if peak is None else peak / 2**20))
        print(f"  S={streams:<3d} {provider:48s} p50 {p50:12,.1f} µs  in a graph {graph or 0:10,.1f} µs  "
              f"peak {rows[-1]['peak_mib'] or 0:9,.1f} MiB", flush=True)

    for provider, options in MEMORIES.items():
        if options["backend"] not in available_backends():
            continue
        memory = LongTermMemory(num_basis=BASIS, past_samples=SAMPLES, **options).cuda()
        with torch.no_grad():
            for _ in range(2):  # a full memory: the timed steps consolidate into a past
                memory(tokens, query, pk, pv, HEADS)
        add(provider, training_step(memory, pk, pv, tokens, query, cotangent))
        del memory
    if not args.no_compile:
        try:
            add(COMPILED, compiled_reference_step(pk, pv, tokens, query, cotangent))
        except Exception as err:  # reported, not fatal: the other rows still count
            print(f"  S={streams}: torch.compile of the reference failed: {type(err).__name__}: {err}", flush=True)
    return rows


def report(rows: list[dict], meta: dict, out: Path) -> None:
    """backward.md (p50 µs and peak MiB, one row per provider, columns per S) and backward.png."""
    sizes = sorted({r["S"] for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    time_cell = {(r["provider"], r["S"]): r["p50_us"] for r in rows}
    graph_cell = {(r["provider"], r["S"]): r.get("graph_us") for r in rows}
    peak_cell = {(r["provider"], r["S"]): r["peak_mib"] for r in rows}
    headers = ["provider", *[f"S={s} µs" for s in sizes], *[f"S={s} graph µs" for s in sizes],
               *[f"S={s} MiB" for s in sizes]]
    table = harness.markdown_table(headers, [[p, *[time_cell.get((p, s)) for s in sizes],
                                              *[graph_cell.get((p, s)) for s in sizes],
                                              *[peak_cell.get((p, s)) for s in sizes]] for p in providers])
    harness.write_markdown(out / "backward.md", f"One trainable LTM step (forward + backward), L={LENGTH} bf16 tokens "
                           f"×{TOKENS} per frame, N={BASIS}, M={SAMPLES}, e=D={WIDTH}, {HEADS} heads, {QUERIES} queries: "
                           "p50 µs per step (eager calls, and replayed from a CUDA graph) and peak MiB", table, meta)

    def lines(cell):
        return {p: ([s for s in sizes if cell.get((p, s)) is not None],
                    [cell[p, s] for s in sizes if cell.get((p, s)) is not None]) for p in providers}
    if line_charts(str(out / "backward.png"), [
            dict(title="forward + backward, eager", xlabel="streams S", ylabel="GPU time per step, p50 (µs)",
                 lines=lines(time_cell)),
            dict(title="forward + backward, CUDA graph", xlabel="streams S", ylabel="GPU time per step, p50 (µs)",
                 lines=lines(graph_cell)),
            dict(title="peak memory of one step", xlabel="streams S", ylabel="MiB", lines=lines(peak_cell))],
            suptitle=f"trainable step on {meta['device']}: L={LENGTH} bf16 frames, N={BASIS}, e=D={WIDTH}"):
        print(f"wrote {out / 'backward.png'}")


def read_csv(path: str) -> tuple[list[dict], dict]:
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    rows = [dict(S=int(r["S"]), provider=r["provider"], peak_mib=float(r["peak_mib"]) if r["peak_mib"] else None,
                 graph_us=float(r["graph_us"]) if r.get("graph_us") else None,
                 **{k: float(r[k]) for k in ("p20_us", "p50_us", "p80_us")}) for r in records]
    return rows, {k: records[0][k] for k in ("device", "torch", "triton", "commit")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per row")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    parser.add_argument("--from-csv", default=None, help="measure nothing: table and plot from a backward.csv")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        report(*read_csv(args.from_csv), out)
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_backward_gpu.py needs a GPU")
    meta = harness.metadata(torch.device("cuda"))
    print(meta, flush=True)
    rows = []
    for streams in args.streams:
        rows += measure(streams, args)
        torch.cuda.empty_cache()
    harness.write_csv(out / "backward.csv", rows, meta)
    report(rows, meta, out)


if __name__ == "__main__":
    main()
