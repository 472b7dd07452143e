"""Retention: after a long video, how much of a few short events does the memory still hold?

    PYTHONPATH=$PWD python bench/bench_retention.py --out DIR [--lengths 1000 10000 100000]
        [--videos 8] [--events 4] [--event-frames 8] [--prefix gpu_]

Videos (bench/synthetic_video.py): a slowly drifting background of pooled frame features with K
events, each ``event-frames`` frames of a distinct feature vector (3× the background's scale) at
known times. Every video streams, L = 256 frames a chunk, through memories of N = 256 slots
(M = 512, τ = 0.75, λ = 0.5), read while streaming by 32 fixed random queries over 12 heads with
identity key/value projections (a stand-in for a Q-former's learned queries):
  sticky (quantile)     the default sampler
  sticky (multinomial)  random draws from the attention density (seeded)
  uniform               sticky off: the past is sampled evenly
  frame subsampling     no memory: N frames evenly spaced over the whole video (the same budget of N vectors)
Each frame carries two extra channels that the projections ignore, 1 and its time t/T; the fit is
linear and channel-wise, so slot n ends up holding c_n·(content, 1, mean time) and the ratio of
the last two gives the mean video time of what the slot holds.
Score of an event, after the whole video, with the event's feature vector x as the one query
(one head, identity projections, the memory's own continuous attention: exact softmax over slots):
  cosine   cos(c, x), c = Σ_n r_n B_n the retrieved signal;
  mass     Σ r_n over slots whose mean time lies within ±``window`` (fraction of the video) of
           the event — the attention mass near the event's time (chance ≈ 2·window);
  chance   the cosine for vectors of the same scale that never appeared (a control: a softmax over
           N slots always finds its best match, so a lost event does not score 0).
Per video the K events are averaged; tables give mean ± std over videos. Fixed seed.
Writes <prefix>retention.csv/.md/.png into --out.
"""
from __future__ import annotations

import argparse
import os
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
from infvideo.reference.attention import SlotWeights, read_values, scores, slot_weights  # noqa: E402

WIDTH = 768               # what the memory stores: features, a constant 1, the frame's time t/T
FEATURES = WIDTH - 2
HEADS, QUERIES = 12, 32
METHODS = ("sticky (quantile)", "sticky (multinomial)", "uniform", "frame subsampling")
METRICS = ("cosine", "mass", "chance")


def identity_projection(device) -> nn.Linear:
    """Key/value projection that passes the features through and drops the two bookkeeping channels."""
    proj = nn.Linear(WIDTH, WIDTH).to(device)
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[:FEATURES, :FEATURES] = torch.eye(FEATURES, device=device)
    return proj


def memories(args, device) -> dict[str, LongTermMemory]:
    common = dict(num_basis=args.basis_count, past_samples=args.past_samples, backend=args.backend,
                  check_finite=False)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    return {"sticky (quantile)": LongTermMemory(sampling="quantile", **common).to(device),
            "sticky (multinomial)": LongTermMemory(sampling="multinomial", generator=generator, **common).to(device),
            "uniform": LongTermMemory(sticky=False, **common).to(device)}


def with_bookkeeping(frames: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """[S, L, FEATURES] → [S, L, WIDTH]: append the channels 1 and t/T."""
    s, count, _ = frames.shape
    t = (torch.arange(start, start + count, device=frames.device, dtype=torch.float32) / length)
    return torch.cat([frames, torch.ones(s, count, 1, device=frames.device), t.expand(s, count)[..., None]], dim=-1)


def retrieve(content: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory's own attention read with one head and identity projections: slot weights
    r [S, K, N] (exact softmax over the slots) and the retrieved signals Σ_n r_n B_n [S, K, FEATURES]."""
    identity = nn.Identity()
    r = slot_weights(scores(content, queries, identity, 1), SlotWeights(None, None))  # [S, 1, K, N]
    return r[:, 0], read_values(content, r, identity, 1)


def score(slots: torch.Tensor, video: DriftingVideo, window: float) -> dict[str, torch.Tensor]:
    """Per video [S], averaged over its events, for slots [S, N, WIDTH]: ``cosine`` and ``mass`` (see
    the module docstring) and ``chance``, the cosine reached by vectors of the events' scale that
    were never shown (what a lost event scores: a softmax over N slots always finds some match)."""
    slots = slots.to(torch.float64)
    content, ones = slots[..., :FEATURES], slots[..., FEATURES]
    held = ones.abs() > 1e-200  # slots whose content has not shrunk to nothing
    when = torch.where(held, slots[..., FEATURES + 1] / torch.where(held, ones, torch.ones_like(ones)), torch.nan)
    queries = video.events.features.to(torch.float64)  # [S, K, FEATURES]
    r, retrieved = retrieve(content, queries)
    cosine = torch.nn.functional.cosine_similarity(retrieved, queries, dim=-1)
    centre = (video.events.centre() / video.length).to(slots.device)  # [S, K]
    near = (when[:, None, :] - centre[..., None]).abs() <= window  # NaN compares False: lost slots are not near
    mass = (r * near).sum(-1)
    gen = torch.Generator().manual_seed(12345)
    unseen = torch.randn(queries.shape, generator=gen, dtype=torch.float64).to(slots.device) * queries.std()
    _, control = retrieve(content, unseen)
    chance = torch.nn.functional.cosine_similarity(control, unseen, dim=-1)
    return {name: value.mean(-1).float().cpu() for name, value in
            (("cosine", cosine), ("mass", mass), ("chance", chance))}


def run_length(length: int, args, device) -> list[dict]:
    video = DriftingVideo(length, FEATURES, args.videos, seed=args.seed + length, device=device, events=args.events,
                          event_frames=args.event_frames, salience=args.salience)
    gen = torch.Generator().manual_seed(args.seed)
    query = torch.randn(args.videos, QUERIES, WIDTH, generator=gen).to(device)
    proj = identity_projection(device)
    mems = memories(args, device)
    keep = ((torch.arange(args.basis_count, device=device) + 0.5) * length / args.basis_count).long()  # subsampling
    kept = torch.zeros(args.videos, args.basis_count, WIDTH, device=device)
    start_time = time.perf_counter()
    with torch.no_grad():
        for start, frames in video.chunks(args.chunk):
            frames = with_bookkeeping(frames, start, length)
            for memory in mems.values():
                memory(frames, query, proj, proj, HEADS)
            inside = (keep >= start) & (keep < start + frames.shape[1])
            kept[:, inside] = frames[:, keep[inside] - start]
    slots = {name: memory.coef for name, memory in mems.items()}
    slots["frame subsampling"] = kept
    rows = []
    for name in METHODS:
        got = score(slots[name], video, args.window)
        rows += [dict(frames=length, method=name, video=v, **{k: float(got[k][v]) for k in METRICS})
                 for v in range(args.videos)]
    print(f"  {length:>9,d} frames: " + "; ".join(
        f"{name} cos {torch.tensor([r['cosine'] for r in rows if r['method'] == name]).mean():.3f} mass "
        f"{torch.tensor([r['mass'] for r in rows if r['method'] == name]).mean():.3f}" for name in METHODS)
        + f"  ({time.perf_counter() - start_time:.1f} s)", flush=True)
    return rows


def summary(rows) -> list[dict]:
    """Mean and std over videos per (length, method)."""
    out = []
    for length in sorted({r["frames"] for r in rows}):
        for name in METHODS:
            group = [r for r in rows if r["frames"] == length and r["method"] == name]
            entry = dict(frames=length, method=name, videos=len(group))
            for metric in METRICS:
                values = torch.tensor([r[metric] for r in group], dtype=torch.float64)
                entry[metric + "_mean"] = float(values.mean())
                entry[metric + "_std"] = float(values.std()) if len(group) > 1 else 0.0
            out.append(entry)
    return out


def tables(stats) -> str:
    lengths = sorted({s["frames"] for s in stats})
    parts = []
    for metric, title in (("cosine", "cosine of the retrieved signal to the event"),
                          ("mass", "attention mass near the event's time"),
                          ("chance", "control: cosine for vectors never shown (what a lost event scores)")):
        lines = []
        for length in lengths:
            line = [f"{length:,d}"]
            for name in METHODS:
                s = next(x for x in stats if x["frames"] == length and x["method"] == name)
                line.append(f"{s[metric + '_mean']:.3f} ± {s[metric + '_std']:.3f}")
            lines.append(line)
        parts.append(f"**{title}** (mean ± std over videos)\n\n" + harness.markdown_table(["frames", *METHODS], lines))
    return "\n\n".join(parts)


def plot(stats, path: Path, window: float) -> None:
    """Cosine and attention mass near the events against video length, one line per method (± std)."""
    panels = []
    for metric, label in (("cosine", "cosine(retrieved signal, event)"),
                          ("mass", f"attention mass within ±{window:g} of the event")):
        lines = {name: ([s["frames"] for s in stats if s["method"] == name],
                        [s[metric + "_mean"] for s in stats if s["method"] == name],
                        [s[metric + "_std"] for s in stats if s["method"] == name]) for name in METHODS}
        panels.append(dict(title=f"retention: {label}", xlabel="video length (frames)",
                           ylabel="mean ± std over videos", lines=lines, log_y=False))
    line_charts(str(path), panels, suptitle="How much of a short event the memory still holds")


def main(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--prefix", default="gpu_" if cuda else "cpu_")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--events", type=int, default=4)
    parser.add_argument("--event-frames", type=int, default=8)
    parser.add_argument("--salience", type=float, default=3.0, help="event features' scale against the background's")
    parser.add_argument("--window", type=float, default=0.01, help="'near' = within this fraction of the video")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--basis-count", type=int, default=256)
    parser.add_argument("--past-samples", type=int, default=512)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-csv", default=None, help="measure nothing: redraw the plot from a CSV this script wrote")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        stats = [r for r in harness.read_csv(args.from_csv)[0] if r.get("cosine_mean") is not None]
        plot(stats, out / f"{args.prefix}retention.png", args.window)
        return stats
    meta = harness.metadata(device)
    print(f"{meta}", flush=True)
    rows = []
    for length in args.lengths:
        rows += run_length(length, args, device)
    stats = summary(rows)
    harness.write_csv(out / f"{args.prefix}retention.csv", stats + rows, meta)
    text = (f"Retention on {meta['device']} (commit {meta['commit']}): {args.videos} videos per length, "
            f"{args.events} events of {args.event_frames} frames each, salience {args.salience:g}, "
            f"N={args.basis_count}, "
            f"M={args.past_samples}, L={args.chunk}, seed {args.seed}; 'near' = within ±{args.window:g} of the video "
            f"(chance mass ≈ {2 * args.window:g}).\n\n" + tables(stats) + "\n")
    (out / f"{args.prefix}retention.md").write_text(text)
    print(text)
    plot(stats, out / f"{args.prefix}retention.png", args.window)
    return stats


if __name__ == "__main__":
    main()
