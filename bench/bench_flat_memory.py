"""Memory and step time against video length: stream 10³ … 10⁶ frames, both must stay flat.

    PYTHONPATH=$PWD python bench/bench_flat_memory.py --out DIR [--max-frames 1000000]
        [--streams 1] [--chunk 256] [--backends auto torch] [--prefix gpu_]

One LongTermMemory per backend (N = 256, M = 512, e = D = 768, 12 heads, 32 queries) eats a
synthetic drifting video (bench/synthetic_video.py: pooled frame features made chunk by chunk on
the device) one chunk at a time. Every step is timed (the video generator is outside the timing);
at checkpoints 1, 2, 5 × 10^k frames a row records the step time (p20/p50/p80 over the steps since
the previous checkpoint, at most the last 64), the size of the memory's state (its state_dict),
and the process's peak memory so far (CUDA: peak allocated; CPU: peak resident set).
Writes <prefix>flat_memory.csv/.md/.png into --out and prints the table.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_video import DriftingVideo  # noqa: E402

from infvideo import LongTermMemory  # noqa: E402
from infvideo.benchmarks import harness  # noqa: E402
from infvideo.plot import line_charts  # noqa: E402

WIDTH, HEADS, QUERIES = 768, 12, 32
WINDOW = 64


def checkpoints(max_frames: int) -> list[int]:
    """1, 2, 5 × 10^k from 10^3 up to max_frames (max_frames itself included)."""
    points = [m * 10 ** k for k in range(3, 10) for m in (1, 2, 5) if m * 10 ** k <= max_frames]
    return points + ([max_frames] if not points or points[-1] != max_frames else [])


def state_bytes(memory: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in memory.state_dict().values() if isinstance(t, torch.Tensor))


def peak_process_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream(backend: str, args, device: torch.device) -> list[dict]:
    """Rows at the checkpoints for one backend."""
    torch.manual_seed(0)
    proj_key, proj_value = nn.Linear(WIDTH, WIDTH).to(device), nn.Linear(WIDTH, WIDTH).to(device)
    query = torch.randn(args.streams, QUERIES, WIDTH, device=device)
    memory = LongTermMemory(num_basis=args.basis_count, past_samples=args.past_samples, backend=backend,
                            check_finite=False).to(device)
    video = DriftingVideo(args.max_frames, WIDTH, args.streams, seed=0, device=device)
    marks = checkpoints(args.max_frames)
    rows, times, seen, since = [], [], 0, 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = time.perf_counter()
    with torch.no_grad():
        for _, frames in video.chunks(args.chunk):
            harness.synchronize(device)
            start = time.perf_counter()
            memory(frames, query, proj_key, proj_value, HEADS)
            harness.synchronize(device)
            times.append((time.perf_counter() - start) * 1e6)
            seen += frames.shape[1]
            since += 1
            while marks and seen >= marks[0]:
                window = times[-min(since, WINDOW):]
                p20, p50, p80 = harness.percentiles(window)
                rows.append(dict(backend=memory.backend_on(frames.device), frames=marks.pop(0),
                                 steps=len(times),
                                 S=args.streams, L=args.chunk, N=args.basis_count, p20_us=p20, p50_us=p50,
                                 p80_us=p80, state_kib=state_bytes(memory) / 1024,
                                 peak_mib=peak_process_mib(device), window_steps=len(window)))
                print(f"  {backend:6s} {rows[-1]['frames']:>9,d} frames  step p50 {p50:9.1f} µs  state "
                      f"{rows[-1]['state_kib']:8.1f} KiB  peak {rows[-1]['peak_mib']:8.1f} MiB", flush=True)
                since = 0
    print(f"  {backend}: {len(times)} steps, {seen:,d} frames in {time.perf_counter() - wall:.1f} s", flush=True)
    return rows


def table(rows) -> str:
    return harness.markdown_table(
        ["backend", "frames", "steps", "step p20 µs", "step p50 µs", "step p80 µs", "state KiB", "peak MiB"],
        [[r["backend"], f"{r['frames']:,d}", r["steps"], r["p20_us"], r["p50_us"], r["p80_us"], r["state_kib"],
          r["peak_mib"]] for r in rows])


def plot(rows, path: Path, device: str, streams: int) -> None:
    """Step time, the memory's state and the process's peak memory against video length, per backend."""
    names = list(dict.fromkeys(r["backend"] for r in rows))

    def lines(metric):
        return {n: ([r["frames"] for r in rows if r["backend"] == n], [r[metric] for r in rows if r["backend"] == n])
                for n in names}

    line_charts(str(path), [
        dict(title=f"step time on {device}, S={streams}", xlabel="frames streamed",
             ylabel="time per step, p50 (µs)", lines=lines("p50_us")),
        dict(title="the memory's state (state_dict)", xlabel="frames streamed", ylabel="state (KiB)",
             lines=lines("state_kib"), from_zero=True),
        dict(title="process peak memory so far", xlabel="frames streamed", ylabel="peak (MiB)",
             lines=lines("peak_mib"), from_zero=True),
    ], suptitle="Memory and step time against video length: both stay flat")


def main(argv=None) -> list[dict]:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--prefix", default="gpu_" if cuda else "cpu_")
    parser.add_argument("--max-frames", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--basis-count", type=int, default=256)
    parser.add_argument("--past-samples", type=int, default=512)
    parser.add_argument("--backends", nargs="+", default=["auto", "torch"] if cuda else ["torch"])
    parser.add_argument("--from-csv", default=None, help="measure nothing: redraw the plot from a CSV this script wrote")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        rows, meta = harness.read_csv(args.from_csv)
        plot(rows, out / f"{args.prefix}flat_memory.png", meta["device"], rows[0]["S"])
        return rows
    meta = harness.metadata(device)
    print(f"{meta}", flush=True)
    rows = []
    for backend in args.backends:
        rows += stream(backend, args, device)
    harness.write_csv(out / f"{args.prefix}flat_memory.csv", rows, meta)
    text = (f"Memory vs video length on {meta['device']} (torch {meta['torch']}, commit {meta['commit']}): "
            f"S={args.streams}, L={args.chunk}, N={args.basis_count}, M={args.past_samples}, e=D={WIDTH}, "
            f"pooled frames; step time over the steps since the previous checkpoint (at most {WINDOW}).\n\n"
            + table(rows) + "\n")
    (out / f"{args.prefix}flat_memory.md").write_text(text)
    print(text)
    plot(rows, out / f"{args.prefix}flat_memory.png", meta["device"], args.streams)
    return rows


if __name__ == "__main__":
    main()
