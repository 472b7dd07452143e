"""Where a step's time goes on the GPU: per-kernel CUDA time (torch.profiler) and host-side Python time.

    PYTHONPATH=$PWD python bench/profile_step_gpu.py [--case s1|s64|gauss16|gauss64|grad1|grad64|folded64|f32proj64]
        [--graph-timeline]

Cases: no-grad steps (s1, s64, and the Gaussian basis's gauss16 and gauss64 in the setting of
bench_quadrature_gpu.py); a trainable step, forward and ``torch.autograd.grad`` into
tokens, query and both projections' parameters (grad1, grad64, the setting of
bench_backward_gpu.py); the step with fp32 projections folded into the queries (folded64: the
default at 64 streams, ``ops.step.FACTORED_ON_GPU``) or projecting K and V (f32proj64: the switch
off). For the S=1 cases and gauss16 (host-bound steps) the host time per call of the step's parts
is printed too (perf_counter around each, inclusive; cProfile's own
cost per Python call would outweigh the calls it times). ``--graph-timeline`` adds, for the no-grad
cases, the kernels of one replay of the step from a CUDA graph, each with its start, duration and
the gap before it (the launch gaps a user's graph still has). ``--sync-check`` instead runs one step per
case with host synchronisations made errors and prints where the first one happens.

Nsight Compute, one warm step per case and each kernel's achieved DRAM bandwidth::

    ncu --clock-control none --profile-from-start off --csv --page raw --metrics $(python \
        bench/profile_step_gpu.py --ncu-metrics) python bench/profile_step_gpu.py --ncu --case s64 > s64.csv
    python bench/profile_step_gpu.py --ncu-table s64.csv

(``--ncu`` runs the case warm, then one step between cudaProfilerStart and Stop.)
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys
import time

import torch
from torch import nn

from infvideo import LongTermMemory
from infvideo.benchmarks import harness
from infvideo.ops import step as step_ops

WIDTH, HEADS, QUERIES = 768, 12, 32
CASES = {"s1": (1, 256, torch.bfloat16, 32, {}), "s64": (64, 256, torch.bfloat16, 32, {}),
         **{f"gauss{s}": (s, 256, torch.bfloat16, 32, dict(basis="gaussian", quad_points=1000, past_samples=512))
            for s in (16, 64)},
         "grad1": (1, 256, torch.bfloat16, 32, {}), "grad64": (64, 256, torch.bfloat16, 32, {}),
         "folded64": (64, 256, torch.float32, 32, {}), "f32proj64": (64, 256, torch.float32, 32, {})}


def make(streams, length, dtype, tokens):
    """Projections, frames ([S, L, tokens, e] or pooled [S, L, e]) and query of a case."""
    torch.manual_seed(0)
    pk, pv = nn.Linear(WIDTH, WIDTH).cuda().to(dtype), nn.Linear(WIDTH, WIDTH).cuda().to(dtype)
    shape = (streams, length, tokens, WIDTH) if tokens else (streams, length, WIDTH)
    # Float32 with tokens (folded64, f32proj64): bf16 tokens beside the float32 projections and query.
    frames_dtype = torch.bfloat16 if dtype == torch.float32 and tokens else dtype
    frames = torch.randn(shape, device="cuda", dtype=frames_dtype)
    return pk, pv, frames, torch.randn(streams, QUERIES, WIDTH, device="cuda", dtype=dtype)


def step_call(name, memory, pk, pv, frames, query):
    """One call of the case: a no-grad step, or a step and its backward for the grad cases."""
    if not name.startswith("grad"):
        def call():
            with torch.no_grad():
                memory(frames, query, pk, pv, HEADS)
        return call
    frames.requires_grad_()
    query.requires_grad_()
    wrt = [frames, query, *pk.parameters(), *pv.parameters()]
    cotangent = torch.randn_like(query)

    def call():
        torch.autograd.grad(memory(frames, query, pk, pv, HEADS), wrt, cotangent)
    return call


# The step's parts whose host time is reported: (module, attribute path), each looked up where
# its caller finds it (a module global or a class attribute).
HOST_PARTS = [
    ("infvideo.memory", "LongTermMemory.forward"), ("infvideo.memory", "LongTermMemory.check"),
    ("infvideo.memory", "LongTermMemory.commit"), ("infvideo.memory", "fused_step"),
    ("infvideo.finite_check", "DeviceCheck.raise_flags"), ("infvideo.finite_check", "DeviceCheck.select"),
    ("infvideo.ops.step", "_fused_consolidation"), ("infvideo.ops.step", "gaussian_consolidation"),
    ("infvideo.ops.step", "_project_pair"), ("infvideo.ops.step", "quadrature_attention_unchecked"),
    ("infvideo.ops.step", "slot_attention_unchecked"), ("infvideo.ops.step", "quantile_bins_unchecked"),
    ("infvideo.reference.sticky", "quadrature_mass"),
    ("infvideo.kernels.sampling", "quantile_points"), ("infvideo.kernels.gaussian_fit", "sample_mix"),
    ("infvideo.kernels.dense_consolidate", "dense_consolidate"), ("infvideo.kernels.quadrature", "table_attention"),
    ("infvideo.kernels.products", "head_products"), ("infvideo.kernels._launch", "CachedLaunch.__call__"),
]


def graph_timeline(call, replays: int = 3) -> str:
    """The kernels of one replay of ``call`` captured in a CUDA graph (as a user's graph replays
    it): each kernel's start after the first one's, its duration and the gap since the previous
    kernels ended (negative where a programmatic dependent started before its predecessor ended),
    from torch.profiler over ``replays`` replays (the last one is shown)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda k: k[0])
    kernels = kernels[len(kernels) - len(kernels) // replays:]
    first, ended, busy, lines = kernels[0][0], kernels[0][0], 0.0, []
    for start, end, name in kernels:
        lines.append(f"  {name[:44]:44s} start {start - first:8.1f}  µs {end - start:8.1f}  gap {start - ended:7.1f}")
        busy += end - start
        ended = max(ended, end)
    lines.append(f"  replay span {ended - first:,.1f} µs, kernels {busy:,.1f} µs, {len(kernels)} kernels")
    return "\n".join(lines)


def host_breakdown(call, calls: int) -> list[tuple[str, float, float]]:
    """(part, host µs per step, calls per step) of ``HOST_PARTS`` over ``calls`` steps."""
    totals: dict = {}
    patched = []
    for module_name, path in HOST_PARTS:
        owner = importlib.import_module(module_name)
        *outer, attr = path.split(".")
        for name in outer:
            owner = getattr(owner, name)
        original = getattr(owner, attr, None)
        if original is None:
            continue

        def timed(*args, _original=original, _path=path, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent, count = totals.get(_path, (0.0, 0))
                totals[_path] = (spent + time.perf_counter() - start, count + 1)
        setattr(owner, attr, timed)
        patched.append((owner, attr, original))
    try:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    finally:
        for owner, attr, original in patched:
            setattr(owner, attr, original)
    return [(path, totals[path][0] / calls * 1e6, totals[path][1] / calls) for _, path in HOST_PARTS if path in totals]


def sync_check(name, call):
    """Runs one call with host synchronisations made errors: prints the stack of the first, if any."""
    import traceback
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
        print(f"== {name}: no host synchronisation in a step")
    except RuntimeError:
        print(f"== {name}: the step synchronises with the GPU here:")
        traceback.print_exc(limit=-8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


# Nsight Compute metrics of --ncu-table: kernel time, DRAM bytes each way and the share of the
# DRAM peak, registers per thread and achieved occupancy.
NCU_METRICS = ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed", "launch__registers_per_thread",
               "sm__warps_active.avg.pct_of_peak_sustained_active")


def ncu_table(path: str) -> str:
    """Markdown table of an ``ncu --csv --page raw`` report of NCU_METRICS: one row per kernel launch."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # the program's own output interleaves
    rows = list(csv.DictReader(lines))
    units = rows[0] if rows and not rows[0]["ID"].strip().isdigit() else {}
    scale = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "nsecond": 1e-3, "msecond": 1e3, "ms": 1e3,
             "byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}

    def value(row, metric):  # µs for times, MB for bytes, as is otherwise
        text = row[metric].replace(",", "")
        return float(text) * scale.get(units.get(metric, ""), 1.0)
    out = ["| kernel | µs | DRAM read MB | DRAM write MB | achieved TB/s | % of DRAM peak | registers | occupancy % |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["ID"].strip().isdigit():
            continue
        micros = value(row, "gpu__time_duration.sum")
        read, write = value(row, "dram__bytes_read.sum"), value(row, "dram__bytes_write.sum")
        name = row["Kernel Name"].split("(")[0][:48]
        out.append(f"| {name} | {micros:,.1f} | {read:,.1f} | {write:,.1f} | {(read + write) / micros:,.2f} | "
                   f"{value(row, NCU_METRICS[3]):.0f} | {value(row, NCU_METRICS[4]):.0f} | {value(row, NCU_METRICS[5]):.0f} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--sync-check", action="store_true",
                        help="only run one step per case under torch.cuda.set_sync_debug_mode('error') and print "
                             "where the first host synchronisation happens")
    parser.add_argument("--graph-timeline", action="store_true",
                        help="also the kernels of one replay of the step from a CUDA graph: start, duration, gap")
    parser.add_argument("--ncu", action="store_true",
                        help="run each case warm, then one step between cudaProfilerStart and Stop (for ncu)")
    parser.add_argument("--ncu-metrics", action="store_true", help="print the metrics --ncu-table reads, for ncu")
    parser.add_argument("--ncu-table", metavar="CSV", help="print a table of an ncu --csv --page raw report")
    args = parser.parse_args()
    if args.ncu_metrics:
        print(",".join(NCU_METRICS))
        return
    if args.ncu_table:
        print(ncu_table(args.ncu_table))
        return
    for name in args.case or sorted(CASES):
        streams, length, dtype, tokens, kwargs = CASES[name]
        pk, pv, frames, query = make(streams, length, dtype, tokens)
        memory = LongTermMemory(backend="triton", check_finite=False, cuda_graphs=False, **kwargs).cuda()
        step_ops.FACTORED_ON_GPU = name.startswith("folded")
        call = step_call(name, memory, pk, pv, frames, query)
        for _ in range(5):
            call()
        torch.cuda.synchronize()
        if args.sync_check:
            sync_check(name, call)
            continue
        if args.ncu:
            torch.cuda.cudart().cudaProfilerStart()
            call()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            print(f"== {name}: one step profiled", file=sys.stderr)
            continue
        wall = harness.percentiles(harness.call_latency(call, torch.device("cuda"), budget_s=0.3))[1]
        gpu = harness.percentiles(harness.gpu_time(call, 0.3))[1]
        print(f"== {name}: p50 µs per call, wall-clock {wall:,.1f}, do_bench {gpu:,.1f}")
        print(f"== {name}: CUDA time per kernel (10 steps)")
        print(harness.kernel_times(call))
        if args.graph_timeline and not name.startswith("grad"):
            print(f"== {name}: kernels of one CUDA-graph replay (µs)")
            print(graph_timeline(call))
        if streams == 1 or name == "gauss16":
            print(f"== {name}: host µs per call of each part (inclusive, 200 calls)")
            for part, micros, count in host_breakdown(call, 200):
                print(f"  {part:55s} {micros:8.1f}  ({count:g} per call)")


if __name__ == "__main__":
    main()
