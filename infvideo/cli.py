"""The ``infvideo`` command line: ``python -m infvideo {demo,encode,bench,info}``."""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from . import _checks
from .backends import available_backends
from .memory import LongTermMemory
from .progress import progress


def synthetic_video(frames: int, chunk: int, streams: int, width: int, seed: int = 0):
    """(the frames of its few sharp events, an iterator of chunks [S, L, e]) of a slowly drifting
    random signal."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(streams, width, generator=gen)
    events = {int(t): torch.randn(streams, width, generator=gen) * 4
              for t in torch.randint(0, frames, (4,), generator=gen)}

    def chunks():
        nonlocal state
        for start in range(0, frames, chunk):
            length = min(chunk, frames - start)
            steps = torch.randn(streams, length, width, generator=gen) * 0.05
            video = state[:, None] + steps.cumsum(1)
            state = video[:, -1]
            for t, feature in events.items():
                if start <= t < start + length:
                    video[:, t - start] += feature
            yield video

    return sorted(events), chunks()


def _first_memory(model: nn.Module) -> LongTermMemory:
    return next(m for m in model.modules() if isinstance(m, LongTermMemory))


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB on the GPU"
    import resource
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB resident"


# The demo holds one chunk of frame tokens (S × L × 32 × 768 float32) at a time: refuse a chunk
# that cannot fit before allocating it.
_DEMO_CHUNK_BYTES = 8 << 30


def demo(args) -> None:
    """Stream a long synthetic video through the Video-LLaMA-style video Q-former with the memory on."""
    from .models import VideoLlamaQFormer
    from .plot import memory_picture
    from .reference.sticky import quantile_bins

    device = _checks.device_option("--device", args.device) if args.device else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    chunk_bytes = args.streams * min(args.chunk, args.frames) * 32 * 768 * 4
    if chunk_bytes > _DEMO_CHUNK_BYTES:
        raise ValueError(f"--chunk {args.chunk} (with --streams {args.streams}): one chunk of frame tokens would "
                         f"take {chunk_bytes / 2**30:,.0f} GiB, more than the demo's {_DEMO_CHUNK_BYTES >> 30} GiB")
    torch.manual_seed(0)
    # The memory's own settings (exact integral, quantile sampling), not the published ones.
    model = VideoLlamaQFormer(alpha=args.alpha, num_basis=args.num_basis, past_samples=args.past_samples,
                              preset="exact", sampling="quantile").to(device).eval()
    memory = _first_memory(model)
    tokens = 32
    masses, samples, steps = [], [], []
    model.reset()
    events, chunks = synthetic_video(args.frames, args.chunk, args.streams, 768)
    start = time.perf_counter()
    with torch.no_grad(), progress(args.streams * args.frames, "demo", args.quiet) as bar:
        for chunk in chunks:
            # Per-frame image-Q-former outputs: the frame's vector plus token-level noise.
            frames = (chunk[:, :, None, :] + 0.1 * torch.randn(*chunk.shape[:2], tokens, chunk.shape[-1])).to(device)
            tick = time.perf_counter()
            embeddings = model.encode_chunk(frames)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            steps.append(time.perf_counter() - tick)
            stats = memory.sticky_stats[:1].float().cpu()
            masses.append(stats.sum(1)[0])
            samples.append(quantile_bins(stats, memory.config.past_samples)[0][0] if masses[-1].sum() > 0 else None)
            bar.update(chunk.shape[0] * chunk.shape[1])
            bar.set_postfix_str(f"chunk {len(steps)}/{-(-args.frames // args.chunk)}", refresh=False)
    total = time.perf_counter() - start
    frames_seen = args.streams * args.frames
    cfg = memory.config
    print(f"infvideo demo on {device}: Video-LLaMA-style video Q-former (2 layers, 32 queries), memory on every "
          f"cross-attention (alpha={args.alpha}, N={cfg.num_basis}, M={cfg.past_samples}, backend "
          f"{memory.backend_on(device)})")
    print(f"  {args.streams} stream(s) x {args.frames} frames in {len(steps)} chunks of {args.chunk}: "
          f"{frames_seen / sum(steps):,.0f} frames/s through the Q-former "
          f"({frames_seen / total:,.0f} frames/s with the synthetic video); chunk p50 "
          f"{1e3 * statistics.median(steps):.2f} ms")
    print(f"  peak memory {_peak_memory(device)}; memory state {memory.coef.numel() * 4 / 1024:.0f} KiB per layer "
          f"whatever the length; output {tuple(embeddings.shape)}, finite={bool(torch.isfinite(embeddings).all())}")
    title = (f"Where the memory's attention lies in the video after each chunk of {args.chunk} frames\n"
             f"(first layer, stream 0, mean over heads and queries; N={cfg.num_basis} bins, M={cfg.past_samples} "
             f"sticky samples, τ={cfg.tau:g}; a synthetic video)")
    if memory_picture(args.png, masses, samples, args.chunk, cfg.tau, args.fps, title, events):
        print(f"  wrote {args.png}: attention over video time after each chunk, and where the sticky samples read")


def bench(args) -> None:
    """Run the benchmark grid (``infvideo.benchmarks.grid``: every op and the step, every provider side
    by side; prints markdown tables, writes CSV and a plot; ``--help`` lists its options)."""
    from .benchmarks import grid
    grid.main(args.rest)


def info(_args) -> None:
    """Versions, device and the backends present."""
    import importlib.util

    import infvideo
    print(f"infvideo {infvideo.__version__}, python {platform.python_version()}, torch {torch.__version__}")
    for name in ("triton", "transformers"):
        found = importlib.util.find_spec(name) is not None
        print(f"{name}: {__import__(name).__version__ if found else 'not installed'}")
    print(f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    built = infvideo.info()
    print(f"C++/CUDA extension: {built['extension'] or 'not built'}"
          + (f" (kernels: {', '.join(built['built'])})" if built["built"] else ""))
    auto = ", ".join(f"{device} tensors -> {backend}" for device, backend in built["auto"].items())
    print(f"backends: {', '.join(available_backends())} (auto: {auto})")


def _positive_int(text: str) -> int:
    """argparse type: an int ≥ 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="infvideo", description="∞-Video long-term memory kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="stream a long synthetic video through the memory")
    p_demo.add_argument("--frames", type=_positive_int, default=10240)
    p_demo.add_argument("--chunk", type=_positive_int, default=256)
    p_demo.add_argument("--streams", type=_positive_int, default=1)
    p_demo.add_argument("--num-basis", type=int, default=256)
    p_demo.add_argument("--past-samples", type=int, default=512)
    p_demo.add_argument("--alpha", type=float, default=0.9)
    p_demo.add_argument("--device", default=None)
    p_demo.add_argument("--png", default="infvideo_demo.png", help="where to write the picture (needs matplotlib)")
    p_demo.add_argument("--fps", type=float, default=25.0, help="frame rate the picture's seconds axis assumes")
    p_demo.add_argument("--quiet", action="store_true", help="no progress bar")
    p_demo.set_defaults(run=demo)
    p_encode = sub.add_parser("encode", help="encode a list of videos, sharded over GPUs under torchrun")
    from . import encode
    encode.add_arguments(p_encode, _positive_int)
    p_encode.set_defaults(run=encode.run)
    # Every argument after "bench" (options included, --help too) goes to the script: the subparser
    # knows no option prefix, so argparse leaves "--quick" and the like to REMAINDER.
    p_bench = sub.add_parser("bench", help="the op and step benchmark grid (every provider side by side)",
                             prefix_chars="+", add_help=False)
    p_bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p_bench.set_defaults(run=bench)
    sub.add_parser("info", help="versions, device, built backends").set_defaults(run=info)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
