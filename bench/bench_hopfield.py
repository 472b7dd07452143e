"""Hopfield retrieval from a continuous-time memory against the discrete modern Hopfield update.

    PYTHONPATH=$PWD python bench/bench_hopfield.py --out DIR [--patterns 64]
        [--ratios 0.5 1 2 4] [--betas 2 8 32 128] [--prefix cpu_]

A small offline version of the "memory retrieval" / "image retrieval" experiments of modern
Hopfield networks with continuous-time memories. Two sets of L generated 16×16 patterns (seeded,
nothing downloaded), each flattened to d = 256 and scaled to unit norm (zero mean first):
  ±1 random     independent random signs (the memory-retrieval setting: well separated)
  smooth images white noise blurred by a Gaussian of 2 pixels (image-like: neighbours correlate)
Every stored pattern is queried once, in two corruptions:
  masked        the bottom half of the image zeroed
  noisy         Gaussian noise of the pattern's norm × 0.5 added
and updated once by
  continuous    infvideo.hopfield.ContinuousHopfield: the L patterns fitted into N = L / ratio
                rectangular bins (λ = 1e-3), q ← Bᵀ softmax(β B q) (the exact continuous attention)
  discrete      infvideo.hopfield.DiscreteHopfield: q ← Xᵀ softmax(β X q) over the L patterns.
Scores: retrieval error ‖q − x‖ / ‖x‖ (mean over queries) and the exact share: how often the
stored pattern nearest the output is the one queried. Writes <prefix>hopfield.csv/.md/.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from infvideo.benchmarks import harness
from infvideo.hopfield import ContinuousHopfield, DiscreteHopfield
from infvideo.plot import pyplot

SIDE = 16
DATASETS = ("±1 random", "smooth images")
CORRUPTIONS = ("masked", "noisy")


def patterns(kind: str, count: int, gen: torch.Generator) -> torch.Tensor:
    """[count, 256] unit-norm, zero-mean patterns of one kind."""
    if kind == "±1 random":
        x = torch.randint(0, 2, (count, SIDE * SIDE), generator=gen).float() * 2 - 1
    else:
        noise = torch.randn(count, 1, SIDE + 12, SIDE + 12, generator=gen)
        taps = torch.exp(-0.5 * (torch.arange(-6, 7).float() / 2.0) ** 2)
        kernel = (taps[:, None] * taps[None, :])[None, None]
        x = torch.nn.functional.conv2d(noise, kernel / kernel.sum()).reshape(count, -1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True)


def corrupt(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "masked":
        mask = torch.ones(SIDE, SIDE)
        mask[SIDE // 2:] = 0
        return x * mask.reshape(-1)
    noise = torch.randn(x.shape, generator=gen)
    return x + 0.5 * noise / noise.norm(dim=1, keepdim=True) * x.norm(dim=1, keepdim=True)


def scores(out: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """(mean relative L2 error to the queried pattern, share whose nearest stored pattern is it)."""
    error = ((out - x).norm(dim=1) / x.norm(dim=1)).mean()
    nearest = torch.cdist(out, x).argmin(1)
    return float(error), float((nearest == torch.arange(len(x))).float().mean())


def run(args) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for data in DATASETS:
        x = patterns(data, args.patterns, gen)
        for corruption in CORRUPTIONS:
            q = corrupt(x, corruption, gen)
            for beta in args.betas:
                memory = DiscreteHopfield(beta=beta)
                memory.store(x)
                error, exact = scores(memory.retrieve(q), x)
                rows.append(dict(data=data, query=corruption, method="discrete", L=args.patterns, N=None,
                                 L_over_N=None, beta=beta, error=error, exact=exact))
                for ratio in args.ratios:
                    n = round(args.patterns / ratio)
                    memory = ContinuousHopfield(n, beta=beta, ridge=1e-3)
                    memory.store(x)
                    error, exact = scores(memory.retrieve(q), x)
                    rows.append(dict(data=data, query=corruption, method="continuous", L=args.patterns, N=n,
                                     L_over_N=ratio, beta=beta, error=error, exact=exact))
    return rows


def table(rows: list[dict], ratios: list[float]) -> str:
    """One line per (data, query, β): error / exact share, discrete then continuous per L/N."""
    headers = ["data", "query", "β", "discrete", *[f"continuous L/N={r:g}" for r in ratios]]
    lines = {}
    for row in rows:
        key = (row["data"], row["query"], row["beta"])
        lines.setdefault(key, {})[row["L_over_N"]] = f"{row['error']:.3f} / {100 * row['exact']:.0f}%"
    body = [[*key[:2], f"{key[2]:g}", cells[None], *[cells[r] for r in ratios]] for key, cells in lines.items()]
    return harness.markdown_table(headers, body)


def picture(path: Path, rows: list[dict], ratios: list[float]) -> bool:
    plt = pyplot("the plot")
    if plt is None:
        return False
    combos = [(d, c) for d in DATASETS for c in CORRUPTIONS]
    fig, axes = plt.subplots(2, len(combos), figsize=(4.2 * len(combos), 7), layout="constrained", squeeze=False)
    curves = [("discrete", None, "black")] + [("continuous", r, f"C{i}") for i, r in enumerate(ratios)]
    for col, (data, corruption) in enumerate(combos):
        for method, ratio, colour in curves:
            picked = [r for r in rows if (r["data"], r["query"], r["method"], r["L_over_N"]) ==
                      (data, corruption, method, ratio)]
            label = method if ratio is None else f"{method}, L/N = {ratio:g}"
            betas = [r["beta"] for r in picked]
            # discrete dashed on top: at L/N = 1 (one pattern a bin) the continuous update is the same
            style = dict(marker="o", color=colour, label=label, zorder=3 if ratio is None else 2,
                         linestyle="--" if ratio is None else "-", markersize=3 if ratio is None else 5)
            axes[0][col].plot(betas, [r["error"] for r in picked], **style)
            axes[1][col].plot(betas, [100 * r["exact"] for r in picked], **style)
        axes[0][col].set_title(f"{data}, {corruption}", fontsize=10)
        axes[0][col].set_ylabel("retrieval error ‖q − x‖/‖x‖")
        axes[1][col].set_ylabel("exact retrievals (%)")
        axes[1][col].set_ylim(-3, 103)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log")
            ax.set_xlabel("β")
            ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"Hopfield retrieval of L = {rows[0]['L']} patterns (d = 256), one update", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--patterns", type=int, default=64)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1, 2, 4])
    parser.add_argument("--betas", type=float, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--prefix", default="cpu_")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = run(args)
    stem = args.out / f"{args.prefix}hopfield"
    harness.write_csv(stem.with_suffix(".csv"), rows, harness.metadata(torch.device("cpu")))
    text = table(rows, args.ratios)
    stem.with_suffix(".md").write_text(
        f"# Hopfield retrieval, L = {args.patterns} patterns of 16×16, one update\n\n"
        "Cells: retrieval error ‖q − x‖/‖x‖ / share of exact retrievals (nearest stored pattern is the "
        "queried one). Continuous: rectangular bins, N = L / (L/N), λ = 1e-3. Written by "
        "`bench/bench_hopfield.py`.\n\n" + text + "\n")
    picture(stem.with_suffix(".png"), rows, args.ratios)
    print(text)
    print(f"{len(rows)} rows in {time.perf_counter() - start:.1f} s → {stem}.{{csv,md,png}}")


if __name__ == "__main__":
    main()
