"""The ``infvideo`` command line: ``python -m infvideo {demo,info}``."""
from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from .backends import available_backends
from .memory import LongTermMemory


def synthetic_video(frames: int, chunk: int, streams: int, width: int, seed: int = 0):
    """Yield chunks [S, L, e] of a slowly drifting random signal with a few sharp events."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(streams, width, generator=gen)
    events = {int(t): torch.randn(streams, width, generator=gen) * 4
              for t in torch.randint(0, frames, (4,), generator=gen)}
    for start in range(0, frames, chunk):
        length = min(chunk, frames - start)
        steps = torch.randn(streams, length, width, generator=gen) * 0.05
        video = state[:, None] + steps.cumsum(1)
        state = video[:, -1]
        for t, feature in events.items():
            if start <= t < start + length:
                video[:, t - start] += feature
        yield video


def demo(args) -> None:
    """Stream a long synthetic video through LongTermMemory and report its speed."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    width, model, heads, queries = 768, 768, 12, 32
    proj_key = nn.Linear(width, model).to(device)
    proj_value = nn.Linear(width, model).to(device)
    query = torch.randn(args.streams, queries, model, device=device)
    memory = LongTermMemory(num_basis=args.num_basis, past_samples=args.past_samples).to(device)
    steps = []
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in synthetic_video(args.frames, args.chunk, args.streams, width):
            chunk = chunk.to(device)
            tick = time.perf_counter()
            context = memory(chunk, query, proj_key, proj_value, heads)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            steps.append(time.perf_counter() - tick)
    total = time.perf_counter() - start
    steps.sort()
    state_bytes = memory.coef.numel() * memory.coef.element_size()
    print(f"infvideo demo on {device} (backend {memory.backend}): {args.streams} stream(s) x "
          f"{args.frames} frames in chunks of {args.chunk}, N={args.num_basis}, M={args.past_samples}")
    print(f"  memory step: p50 {1e3 * steps[len(steps) // 2]:.3f} ms, p20 {1e3 * steps[len(steps) // 5]:.3f} ms "
          f"over {len(steps)} chunks")
    print(f"  throughput: {args.streams * args.frames / sum(steps):,.0f} frames/s in the memory "
          f"({args.streams * args.frames / total:,.0f} frames/s including the synthetic video)")
    print(f"  memory size: {state_bytes / 1024:.0f} KiB for the whole video; context {tuple(context.shape)}, "
          f"finite={bool(torch.isfinite(context).all())}")


def info(_args) -> None:
    """Versions, device and the backends present."""
    import infvideo
    print(f"infvideo {infvideo.__version__}, python {platform.python_version()}, torch {torch.__version__}")
    print(f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    print(f"backends: {', '.join(available_backends())}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="infvideo", description="∞-Video long-term memory kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="stream a long synthetic video through the memory")
    p_demo.add_argument("--frames", type=int, default=16384)
    p_demo.add_argument("--chunk", type=int, default=256)
    p_demo.add_argument("--streams", type=int, default=1)
    p_demo.add_argument("--num-basis", type=int, default=256)
    p_demo.add_argument("--past-samples", type=int, default=512)
    p_demo.add_argument("--device", default=None)
    p_demo.set_defaults(run=demo)
    sub.add_parser("info", help="versions, device, built backends").set_defaults(run=info)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
