"""Measurement helpers shared by the benchmarks: timing percentiles, peak memory, copy bandwidth,
the run's metadata, and CSV / markdown output.

Times are wall-clock per call, in microseconds. On CUDA the device is synchronised after each
block of calls (so a call's launch latency counts, as it would in a loop), on the CPU every call
is timed on its own. Peak memory is what one call allocates above what was allocated before it.
"""
from __future__ import annotations

import csv
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    """(p20, p50, p80) of a list of times (nearest rank)."""
    ordered = sorted(times)
    return tuple(ordered[int(q * (len(ordered) - 1))] for q in (0.2, 0.5, 0.8))


def time_calls(fn, device: torch.device, budget_s: float = 0.3, min_calls: int = 3, max_calls: int = 200,
               block: int = 5, warmups: int = 2) -> list[float]:
    """Per-call times (µs) of ``fn()``: ``warmups`` untimed calls, then as many calls as fit ``budget_s``
    (at least ``min_calls``, at most ``max_calls``), sized by the first call.

    On CUDA calls run in blocks of ``block`` with one synchronisation per block (each block gives
    one sample, its mean); on the CPU each call is one sample.
    """
    for _ in range(warmups):  # the first calls may build caches or pick kernels
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    per_block = block if device.type == "cuda" else 1
    count = int(min(max_calls, max(min_calls, budget_s / max(first, 1e-7))))
    samples = []
    for _ in range(max(1, count // per_block)):
        start = time.perf_counter()
        for _ in range(per_block):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / per_block * 1e6)
    return samples


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
    """Bytes moved per second (read + write) by a large device-to-same-device copy, median of 10."""
    numel = (2**29 if device.type == "cuda" else 2**25)  # 1 GiB / 64 MiB of bf16
    src = torch.ones(numel, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = time_calls(lambda: dst.copy_(src), device, budget_s=0.0, min_calls=10, max_calls=10, block=1)
    return 2 * numel * 2 / (percentiles(times)[1] * 1e-6)


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
