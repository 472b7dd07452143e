"""Per-chunk time of the two video Q-formers (infvideo.models) at their published sizes.

    PYTHONPATH=$PWD python bench/bench_models.py [--device cuda] [--frames 256] [--streams 1] [--out bench/results/models.csv]

One row per (model, memory settings): Video-LLaMA's video Q-former (2 layers, 32 queries, chunks
[S, L, 32, 768]) and VideoChat2's (12 layers, 6 with cross-attention, 32 + 64 queries and a
12-token instruction, chunks [S, L, 196, 1024]), each with the published memory (paper preset,
upstream sampler: the models' defaults), with the memory's exact preset and quantile sampling,
and with α = 1 (the Q-former alone: the memory is neither read nor written), float32, eval mode,
no gradients. The memory consolidates one chunk per call, as in a video. Times per chunk in
milliseconds (p20/p50/p80) through infvideo/benchmarks/harness.py (GPU time from do_bench on CUDA).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from infvideo.benchmarks.harness import REPO, metadata, percentiles, time_calls, write_csv
from infvideo.models import VideoChat2QFormer, VideoLlamaQFormer

SETTINGS = {"published": {}, "exact": dict(preset="exact", sampling="quantile"), "alpha=1": None}


def _model(family: str, settings: str, device: torch.device):
    memory = SETTINGS[settings]
    alpha = 1.0 if memory is None else 0.9
    cls = VideoLlamaQFormer if family == "videollama" else VideoChat2QFormer
    return cls(alpha=alpha, **(memory or {})).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=256, help="frames per chunk (L)")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per row")
    parser.add_argument("--out", default=None, help="CSV path (default bench/results/<device>_models.csv)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as the published models run
    torch.manual_seed(0)
    rows = []
    for family, tokens, width in (("videollama", 32, 768), ("videochat2", 196, 1024)):
        frames = torch.randn(args.streams, args.frames, tokens, width, device=device)
        for settings in SETTINGS:
            model = _model(family, settings, device)
            text = {} if family == "videollama" else dict(
                instruction_ids=torch.randint(1000, 30000, (1, 12), device=device))
            with torch.no_grad():
                model.encode_chunk(frames, **text)  # a first chunk; the timed ones consolidate
                times = time_calls(lambda: model.encode_chunk(frames, **text), device, budget_s=args.budget)
            p20, p50, p80 = (t / 1e3 for t in percentiles(times))
            rows.append(dict(model=family, memory=settings, streams=args.streams, frames=args.frames,
                             p20_ms=round(p20, 3), p50_ms=round(p50, 3), p80_ms=round(p80, 3)))
            print(f"{family:10s} {settings:9s} S={args.streams} L={args.frames} {device.type}: "
                  f"{p50:9.2f} ms per chunk (p20 {p20:.2f}, p80 {p80:.2f})", flush=True)
            del model
    out = args.out or str(REPO / "bench" / "results" / f"{device.type}_models.csv")
    write_csv(Path(out), rows, metadata(device))
    print("wrote", out)


if __name__ == "__main__":
    main()
