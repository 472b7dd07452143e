"""What every benchmark shares: timing, percentiles, peak memory, copy bandwidth, the run's
metadata, CSV / markdown output, and switches set for the length of a measurement.

GPU time comes from ``triton.testing.do_bench`` (CUDA events around each call, the L2 cache
flushed between calls) or ``do_bench_cudagraph`` (calls replayed from a CUDA graph: no host cost
at all). A host-bound call shows its host time there too, since the GPU waits for its launches;
where host cost is the subject, ``host_time`` measures it alone (wall clock per call, no
synchronisation). On the CPU every call is timed with the wall clock. Times are µs per call.
"""
from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def overrides(changes):
    """Sets each (module or dict, name, value) of ``changes`` (an attribute, or a dict's entry) for
    the duration of the block, then restores what was there."""
    def get(owner, name):
        return owner[name] if isinstance(owner, dict) else getattr(owner, name)

    def put(owner, name, value):
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)

    saved = [(owner, name, get(owner, name)) for owner, name, _ in changes]
    try:
        for change in changes:
            put(*change)
        yield
    finally:
        for change in saved:
            put(*change)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    """(p20, p50, p80) of a list of times (linear interpolation between order statistics)."""
    if len(times) == 1:
        return (times[0],) * 3
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    return deciles[1], deciles[4], deciles[7]


def gpu_time(fn, budget_s: float = 0.1, graph: bool = False) -> list[float]:
    """GPU time (µs) of each timed call of ``fn()`` on the current CUDA device, from
    ``triton.testing.do_bench`` (about ``budget_s`` of calls after as long a warm-up) or, with
    ``graph``, ``do_bench_cudagraph`` (``fn`` must be capturable)."""
    from triton.testing import do_bench, do_bench_cudagraph

    rep_ms = max(1, round(budget_s * 1e3))
    if graph:
        ms = do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
    else:
        ms = do_bench(fn, warmup=rep_ms, rep=rep_ms, return_mode="all")
    return [1e3 * t for t in ms]


def call_latency(fn, device: torch.device, budget_s: float = 0.1, block: int = 10, warmups: int = 20) -> list[float]:
    """Wall-clock µs per call of ``fn()`` as a caller waiting for each result would see it: blocks
    of ``block`` calls, each block ending in one synchronisation, for about ``budget_s``. A step
    bound by its host shows its host time, one bound by the GPU its GPU time. (``do_bench`` flushes
    the L2 cache before each call and records events around it, which inflates steps whose launches
    take longer than their kernels.)"""
    for _ in range(warmups):
        fn()
    synchronize(device)
    times, spent = [], 0.0
    while spent < budget_s or len(times) < 5:
        start = time.perf_counter()
        for _ in range(block):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        times.append(elapsed / block * 1e6)
    return times


def host_time(fn, device: torch.device, budget_s: float = 0.1, warmups: int = 2, max_calls: int = 10_000) -> list[float]:
    """Wall-clock time (µs) of each call of ``fn()`` as the host sees it: nothing is synchronised
    between calls (on CUDA: what launching costs the CPU while the GPU keeps up; on the CPU: the call).
    The number of calls is sized so they take about ``budget_s``."""
    for _ in range(warmups):  # the first calls may build caches or pick kernels
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    count = int(min(max_calls, max(3, budget_s / max(time.perf_counter() - start, 1e-7))))
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    synchronize(device)
    return times


def time_calls(fn, device: torch.device, budget_s: float = 0.1, warmups: int = 2) -> list[float]:
    """Per-call times (µs) of ``fn()`` on ``device``: GPU time through ``do_bench`` on CUDA, wall
    clock on the CPU."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return gpu_time(fn, budget_s)
    return host_time(fn, device, budget_s, warmups)


def kernel_times(fn, calls: int = 10, row_limit: int = 16, name_width: int = 60) -> str:
    """torch.profiler's table of CUDA time per kernel over ``calls`` calls of ``fn()`` (the GPU
    synchronised at the end), most time first."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=row_limit, max_name_column_width=name_width)


def peak_bytes(fn, device: torch.device) -> int | None:
    """Bytes one call of ``fn()`` allocates at its peak, above what was allocated before (None if
    this torch cannot tell: the CPU figure comes from the profiler's allocation events)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (AttributeError, RuntimeError):
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def copy_bandwidth(device: torch.device) -> float:
    """Bytes moved per second (read + write) by a large device-to-same-device copy, at the median call."""
    numel = (2**29 if device.type == "cuda" else 2**25)  # 1 GiB / 64 MiB of bf16
    src = torch.ones(numel, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = time_calls(lambda: dst.copy_(src), device, budget_s=0.05)
    return 2 * numel * 2 / (statistics.median(times) * 1e-6)


def commit() -> str:
    """INFVIDEO_COMMIT when set (a copy of the tree on another machine may sit inside an unrelated
    git checkout), else the short commit of the checkout."""
    if os.environ.get("INFVIDEO_COMMIT"):
        return os.environ["INFVIDEO_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench", "infvideo", "kernels"],
                               capture_output=True, text=True, cwd=REPO, timeout=10).stdout.strip()
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("INFVIDEO_COMMIT", "unknown")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


def metadata(device: torch.device) -> dict:
    """Device, versions and commit, written into every CSV row."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return dict(device=device_name(device), torch=torch.__version__, triton=triton_version,
                python=platform.python_version(), commit=commit())


def write_markdown(path: Path, heading: str, table: str, meta: dict) -> str:
    """Writes and prints ``heading`` + " on <device> (torch, triton, commit)" and the table below
    it; returns the text."""
    text = (f"{heading} on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, "
            f"commit {meta['commit']})\n\n{table}\n")
    path.write_text(text)
    print(text)
    return text


def write_csv(path: Path, rows: list[dict], meta: dict) -> None:
    """One CSV row per dict (columns: the union of keys in first-seen order, then the metadata)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    columns += [key for key in meta if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **{k: _cell(v) for k, v in row.items()}})


def read_csv(path) -> tuple[list[dict], dict]:
    """(rows, metadata) of a CSV written by ``write_csv``: numbers back as int or float, blanks as None."""
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    meta_keys = ("device", "torch", "triton", "python", "commit")
    rows = [{key: _value(text) for key, text in rec.items() if key not in meta_keys} for rec in records]
    return rows, {k: records[0].get(k, "") for k in meta_keys} if records else {}


def _value(text: str):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else value


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats keep 3-4 significant digits, None is blank."""
    def text(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
