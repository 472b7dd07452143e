"""Per-op and per-step benchmark grid: every provider side by side, with its distance to the memory floor.

    python -m infvideo bench --out DIR [--prefix gpu_] [--streams 1 16 64]
        [--frames 64 256] [--basis-counts 64 256] [--bases rectangular gaussian] [--dtypes fp32 bf16]
        [--ops consolidate sticky_sampling attention step] [--compile largest] [--budget 0.2]

Grid: S streams × L frames a chunk × N basis functions × basis (rectangular, or Gaussian with
T = 1000 quadrature points) × input dtype, e = D = 768, H = 12, Q = 32, M = 512. Providers are
listed in infvideo/benchmarks/cases.py (published-cost baseline, torch reference, torch.compile'd
reference, every built backend). Each row: p20/p50/p80 µs per call (GPU time from triton.testing.do_bench on CUDA, wall clock on
the CPU), the peak memory one call
allocates, the floor (bytes the op must move ÷ the measured copy bandwidth of the device) and
the relative error of its output against the reference (checked once, outside the timing).
Writes <prefix>grid.csv, <prefix>grid.md and <prefix>grid.png into --out; prints the tables.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import torch

from ..plot import line_charts
from . import harness
from .cases import OPS, PROVIDERS, Case, Inputs, floor_bytes, relative_error

PROVIDER_ORDER = ["baseline", "torch", "torch.compile", "triton", "cuda", "cpu"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m infvideo bench", description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--prefix", default="gpu_" if cuda else "cpu_")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64] if cuda else [1, 4])
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--basis-counts", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--bases", nargs="+", default=["rectangular", "gaussian"], choices=["rectangular", "gaussian"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--compile", default="largest", choices=["none", "largest", "all"],
                        help="torch.compile'd reference: nowhere, only the step at the largest S, L and N in "
                             "the first dtype (compiling costs tens of seconds per case), or everywhere")
    parser.add_argument("--baseline-max-streams", type=int, default=64,
                        help="skip the published-cost baseline above this S (it runs one stream at a time)")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="seconds of timed calls per row (on CUDA, as long again of warm-up)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no new case starts (the rows so far are written)")
    parser.add_argument("--quick", action="store_true", help="one case per basis: S=1, L=256, N=256, fp32")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (on a shared machine 1 avoids stalls of threads waiting for "
                             "a descheduled sibling)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--from-csv", default=None,
                        help="measure nothing: tables and plot from a CSV this script wrote")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.frames, args.basis_counts, args.dtypes = [1], [256], [256], ["fp32"]
    return args


def compile_here(args, case: Case, op: str) -> bool:
    if args.compile == "all":
        return True
    return (args.compile == "largest" and op == "step" and case.frames == max(args.frames)
            and case.basis_count == max(args.basis_counts) and case.streams == max(args.streams)
            and case.dtype == args.dtypes[0])


def measure(provider, device, budget: float, reference_out):
    """(row fields, output) of one provider: first call checked against the reference, then the
    peak memory of one call, then the timed calls."""
    # The baseline has no caches to warm and is slow: its first call also gives its peak memory.
    once = provider.name == "baseline"
    holder = {}
    peak = harness.peak_bytes(lambda: holder.setdefault("out", provider.fn()), device) if once else None
    with torch.no_grad():
        out = holder["out"] if once else provider.fn()
        if not once:
            peak = harness.peak_bytes(provider.fn, device)
        # The baseline takes 0.1-5 s a call: the fewest calls do_bench makes (8) or 4 on the CPU.
        times = harness.time_calls(provider.fn, device, budget_s=0 if once else budget, warmups=0 if once else 2)
    error = None if reference_out is None or not provider.comparable else relative_error(out, reference_out)
    p20, p50, p80 = harness.percentiles(times)
    return dict(p20_us=p20, p50_us=p50, p80_us=p80, peak_mib=None if peak is None else peak / 2**20,
                rel_err=error, calls=len(times)), out


def run_case(args, case: Case, bandwidth: float) -> list[dict]:
    rows = []
    inputs = Inputs(case)
    for op in args.ops:
        if op in ("sticky_sampling", "attention") and case.frames != args.frames[0]:
            continue  # these ops do not read the chunk: measured once per (S, N, basis, dtype)
        floor_us = floor_bytes(op, case, inputs) / bandwidth * 1e6
        providers = PROVIDERS[op](case, inputs, compile_here(args, case, op))
        reference_out = None
        for provider in providers:
            if provider.name == "baseline" and case.streams > args.baseline_max_streams:
                continue
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    fields, out = measure(provider, case.device, args.budget, reference_out)
            except Exception as err:  # noqa: BLE001 - a failing provider (compiler, backend) is reported
                print(f"  {op:15s} {provider.name:13s} failed: {str(err).splitlines()[0][:200]}", flush=True)
                continue
            if provider.reference:
                reference_out = out
            row = dict(op=op, provider=provider.name, S=case.streams,
                       L=case.frames if op in ("consolidate", "step") else None, N=case.basis_count,
                       basis=case.basis, T=1000 if case.basis == "gaussian" or provider.name == "baseline" else None,
                       dtype=case.dtype, **fields, floor_us=floor_us, x_floor=fields["p50_us"] / floor_us)
            rows.append(row)
            print(f"  {op:15s} {provider.name:13s} p50 {row['p50_us']:12,.1f} µs  peak "
                  f"{row['peak_mib'] if row['peak_mib'] is not None else float('nan'):9.2f} MiB  floor "
                  f"{floor_us:9.2f} µs  err {row['rel_err'] if row['rel_err'] is not None else float('nan'):.1e}"
                  f"  ({time.perf_counter() - start:.1f} s)", flush=True)
        del providers
    return rows


def providers_in(rows) -> list[str]:
    seen = {r["provider"] for r in rows}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


def pivot(rows, metric: str, with_floor: bool) -> str:
    """Markdown: one line per (op, S, L, N, basis, dtype), one column per provider."""
    names = providers_in(rows)
    keys = []
    for r in rows:
        key = (r["op"], r["S"], r["L"], r["N"], r["basis"], r["dtype"])
        if key not in keys:
            keys.append(key)
    table = []
    for key in keys:
        group = {r["provider"]: r for r in rows if (r["op"], r["S"], r["L"], r["N"], r["basis"], r["dtype"]) == key}
        line = [key[0], key[1], "" if key[2] is None else key[2], key[3], key[4][:4], key[5]]
        line += [group[p][metric] if p in group else None for p in names]
        if with_floor:
            best = min((g["p50_us"] for p, g in group.items() if p != "baseline"), default=None)
            floor = next(iter(group.values()))["floor_us"]
            line += [floor, None if best is None else best / floor]
        table.append(line)
    headers = ["op", "S", "L", "N", "basis", "dtype", *names] + (["floor µs", "fastest ÷ floor"] if with_floor else [])
    return harness.markdown_table(headers, table)


def plot(rows, path: Path, args) -> bool:
    """p50 time per call against S, one line per provider, the memory-bandwidth floor dashed: the
    rectangular and Gaussian steps and the rectangular attention at the largest L and N, fp32 (or
    the first dtype measured)."""
    big_l, big_n = max(args.frames), max(args.basis_counts)
    dtype = "fp32" if any(r["dtype"] == "fp32" for r in rows) else rows[0]["dtype"]
    panels = []
    for op, basis in (("step", "rectangular"), ("step", "gaussian"), ("attention", "rectangular")):
        chosen = [r for r in rows if r["op"] == op and r["basis"] == basis and r["N"] == big_n
                  and r["dtype"] == dtype and r["L"] in (None, big_l)]
        if not chosen:
            continue
        lines = {}
        for name in providers_in(chosen):
            points = sorted((r["S"], r["p50_us"]) for r in chosen if r["provider"] == name)
            lines[name] = ([p[0] for p in points], [p[1] for p in points])
        floor = sorted({(r["S"], r["floor_us"]) for r in chosen})
        where = f"L={big_l}, " if op == "step" else ""
        panels.append(dict(title=f"{op}, {basis} basis ({where}N={big_n}, {dtype})", xlabel="streams S",
                           ylabel="time per call, p50 (µs)", lines=lines,
                           floor=([f[0] for f in floor], [f[1] for f in floor])))
    return line_charts(str(path), panels, suptitle=f"infvideo benchmark grid on {args.device}")


def report(rows, meta, bandwidth, args, out: Path) -> None:
    """Markdown tables (printed and written) and the plot."""
    text = (f"Benchmark grid on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, commit "
            f"{meta['commit']}); copy bandwidth {bandwidth / 1e9:.1f} GB/s.\n\n### p50 µs per call\n\n"
            + pivot(rows, "p50_us", True) + "\n\n### peak MiB allocated by one call\n\n"
            + pivot(rows, "peak_mib", False) + "\n")
    (out / f"{args.prefix}grid.md").write_text(text)
    print(text)
    if not args.no_plot and plot(rows, out / f"{args.prefix}grid.png", args):
        print(f"wrote {out / (args.prefix + 'grid.png')}")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        rows, meta = harness.read_csv(args.from_csv)
        bandwidth = rows[0]["bandwidth_gbs"] * 1e9 if rows else 0.0
        args.frames = sorted({r["L"] for r in rows if r["L"] is not None}) or args.frames
        args.basis_counts = sorted({r["N"] for r in rows})
        args.device = meta.get("device", args.device)
        report(rows, meta, bandwidth, args, out)
        return rows
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = harness.metadata(device)
    bandwidth = harness.copy_bandwidth(device)
    print(f"{meta}; copy bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    rows, started = [], time.perf_counter()
    for s, length, n, basis, dtype in itertools.product(args.streams, args.frames, args.basis_counts, args.bases,
                                                        args.dtypes):
        if args.deadline is not None and time.perf_counter() - started > args.deadline:
            print(f"deadline of {args.deadline:.0f} s reached: the remaining cases are left out", flush=True)
            break
        case = Case(s, length, n, basis, dtype, device)
        print(f"S={s} L={length} N={n} {basis} {dtype}", flush=True)
        rows += run_case(args, case, bandwidth)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row["bandwidth_gbs"] = bandwidth / 1e9
    harness.write_csv(out / f"{args.prefix}grid.csv", rows, meta)
    report(rows, meta, bandwidth, args, out)
    return rows


if __name__ == "__main__":
    main()
