"""All of issue 6's benchmarks in one run: flat memory, retention, then the op/step grid.

    PYTHONPATH=$PWD python bench/run_suite.py --out $OUT [--budget-s 420] [--quick]

On a GPU (about 8 minutes on an H100): memory vs length streams the full 10⁶ frames with the
fastest backend and the torch reference; retention runs 10³ … 10⁶ frames, 16 videos per length;
the grid covers S ∈ {1, 16, 64}, L ∈ {64, 256}, N ∈ {64, 256}, both bases, fp32 and bf16, and
stops starting new cases once the time budget is spent (the rows so far are kept). On the CPU the
same run uses the CPU defaults of each script (smaller grid, 10⁶ frames for one backend, lengths
up to 10⁵). Every part writes <prefix><part>.csv/.md/.png into --out; <prefix>summary.md collects the
markdown of all three.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_flat_memory  # noqa: E402
import bench_retention  # noqa: E402

from infvideo.benchmarks import grid  # noqa: E402


def main(argv=None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--prefix", default="gpu_" if cuda else "cpu_")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock budget: no grid case starts after it, less a minute of margin")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short video, two lengths, one grid case")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    common = ["--out", args.out, "--prefix", args.prefix]
    flat = ["--max-frames", "20000"] if args.quick else []
    retention = ["--lengths", "1000", "3000", "--videos", "2"] if args.quick else (
        ["--lengths", "1000", "3000", "10000", "30000", "100000", "300000", "1000000", "--videos", "16"]
        if cuda else [])
    print("== memory vs video length", flush=True)
    failed = _attempt("memory vs video length", bench_flat_memory.main, common + flat)
    print(f"== retention ({time.perf_counter() - started:.0f} s so far)", flush=True)
    failed += _attempt("retention", bench_retention.main, common + retention)
    left = args.budget_s - (time.perf_counter() - started)
    print(f"== grid ({time.perf_counter() - started:.0f} s so far; new cases start for {left - 60:.0f} s more)",
          flush=True)
    grid = ["--quick", "--compile", "none"] if args.quick else []
    if cuda and not args.quick:
        grid += ["--budget", "0.1", "--baseline-max-streams", "16"]
    failed += _attempt("grid", grid.main, common + grid + ["--deadline", str(max(0.0, left - 60))])
    out = Path(args.out)
    parts = [out / f"{args.prefix}{name}.md" for name in ("flat_memory", "retention", "grid")]
    (out / f"{args.prefix}summary.md").write_text("\n\n".join(p.read_text() for p in parts if p.is_file()))
    print(f"== done in {time.perf_counter() - started:.0f} s; results in {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    if failed:
        raise SystemExit(1)


def _attempt(name: str, fn, argv) -> list[str]:
    """Run one part; a failure is printed with its traceback and the other parts still run."""
    try:
        fn(argv)
        return []
    except Exception:  # noqa: BLE001 - one broken part must not cost the others' results
        traceback.print_exc()
        print(f"== {name} FAILED (see the traceback above)", flush=True)
        return [name]


if __name__ == "__main__":
    main()
