"""How many quadrature nodes the Gaussian continuous attention needs (issue 18, item 2).

    PYTHONPATH=$PWD python bench/quadrature_accuracy.py --out DIR [--seeds 3] [--prefix cpu_]
    PYTHONPATH=$PWD python bench/quadrature_accuracy.py --from-csv FILE --out DIR   # redraw only

Float64 on the CPU. Per seed, a Gaussian memory as the package builds it (N = 256, sigmas
(0.005, 0.01), M = 512, L = 256, e = D = 768, 12 heads, 32 queries, torch reference) streams three
chunks of random frames, read by random queries through random key/value Linear layers (nn.Linear's
initialisation, uniform in ±1/√e: the ``random`` density) or with the key layer's weight and bias
3× larger (``sharp``: a = Kq/√d and s(t) = aᵀψ(t) three times as large, p ∝ exp(3s)). On the coefficients B after the third chunk, the context
c = Vᵀr, r_n = ∫ p ψ_n (SPEC §8), is computed with each rule below through the package's own
``quadrature_weights`` (a rule is its nodes and positive weights) and ``read_values``:
  trapezoid        T uniform points linspace(0, 1, T) (T = 1,000 was the exact preset's rule before
                   issue 18; the paper preset keeps it)
  Simpson          composite Simpson on T (odd) uniform points
  GL-n             Gauss–Legendre, n = 4, 6, 8 nodes on each of K uniform panels (n·K nodes; GL-8
                   on K = 125 is the exact preset's rule at its default T = 1,000)
  centre GL-4      Gauss–Legendre, 4 nodes on each of m panels per gap between consecutive basis
                   centres (the panels' edges hold every centre; 127·m·4 nodes)
The truth is a converged float64 integral: GL-16 on 4,096 uniform panels (65,536 nodes), checked
against GL-10 on 10,000 panels (100,000 nodes, no node in common); the script stops unless the two
agree to 1e-9 on every row (they agree to ~1e-13).
Error of a row (one seed, one query): ‖c − c*‖ / ‖c*‖ over its D = 768 context entries; the table
gives the max and the median over seeds × queries. Writes <prefix>quadrature_accuracy.csv/.md/.png.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from infvideo import LongTermMemory  # noqa: E402
from infvideo.benchmarks import harness  # noqa: E402
from infvideo.config import MemoryConfig  # noqa: E402
from infvideo.plot import pyplot  # noqa: E402
from infvideo.reference.attention import (Quadrature, attention_constants, quadrature_weights,  # noqa: E402
                                          read_values, scores)
from infvideo.reference.basis import gaussian_parameters, gaussian_values  # noqa: E402
from infvideo.reference.positions import quadrature_grid  # noqa: E402

N, SIGMAS, M, L, E, H, Q, CHUNKS = 256, (0.005, 0.01), 512, 256, 768, 12, 32, 3
SHARPNESS = {"random": 1.0, "sharp": 3.0}
TARGET = 1e-4
REFERENCE = ("GL-16", 16, 4096)
CHECK = ("GL-10", 10, 10_000)
AGREEMENT = 1e-9
NODE_COUNTS = (400, 500, 600, 800, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 20000)


def gauss_legendre(nodes: int, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss–Legendre: ``nodes`` per panel [edges_k, edges_k+1]; (t, w) float64 [K·nodes]."""
    x, w = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(nodes))
    lo, width = edges[:-1, None], edges.diff()[:, None]
    return (lo + width * (x + 1) / 2).reshape(-1), (width * w / 2).reshape(-1)


def simpson(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Simpson on ``points`` (odd) uniform points of [0, 1]: weights h/3·(1, 4, 2, …, 4, 1)."""
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    w = torch.full((points,), 2.0, dtype=torch.float64)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return t, w / (3 * (points - 1))


def centre_edges(per_gap: int) -> torch.Tensor:
    """Panel edges with every basis centre among them, ``per_gap`` equal panels between two centres."""
    centres = torch.unique(gaussian_parameters(N, SIGMAS)[0])
    step = torch.arange(per_gap, dtype=torch.float64) / per_gap
    inner = (centres[:-1, None] + centres.diff()[:, None] * step).reshape(-1)
    return torch.cat([inner, centres[-1:]])


def trapezoid(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The trapezoid on ``points`` uniform points of [0, 1] (the exact preset's rule before issue 18)."""
    grid, weights = quadrature_grid(points, "exact")
    return grid.values, weights


def rule(nodes: torch.Tensor, weights: torch.Tensor) -> Quadrature:
    """A quadrature rule as the package's attention constant: ψ at the nodes, log-weights, gaps."""
    mu, sigma = gaussian_parameters(N, SIGMAS)
    return Quadrature(gaussian_values(nodes, mu, sigma), weights.log(), nodes.diff())


def rules() -> list[tuple[str, str, int, object]]:
    """(rule, parameter, node count, builder) for every measured rule."""
    out = []
    for t in NODE_COUNTS[:-1] + (20001,):
        out.append(("trapezoid", f"T={t}", t, lambda t=t: rule(*trapezoid(t))))
    for t in NODE_COUNTS:
        t += 1 - t % 2  # odd
        out.append(("Simpson", f"T={t}", t, lambda t=t: rule(*simpson(t))))
    for n in (4, 6, 8):
        for count in NODE_COUNTS:
            panels = count // n
            edges = torch.linspace(0, 1, panels + 1, dtype=torch.float64)
            out.append((f"GL-{n}", f"K={panels}", n * panels, lambda n=n, e=edges: rule(*gauss_legendre(n, e))))
    gaps = len(torch.unique(gaussian_parameters(N, SIGMAS)[0])) - 1
    for per_gap in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40):
        out.append(("centre GL-4", f"m={per_gap}", 4 * gaps * per_gap,
                    lambda m=per_gap: rule(*gauss_legendre(4, centre_edges(m)))))
    return out


def memory_case(seed: int, sharpness: float):
    """(coefficients [1, N, e], query [1, Q, D], key, value, the memory's own context) after CHUNKS chunks."""
    gen = torch.Generator().manual_seed(seed)

    def linear(scale: float) -> nn.Linear:
        """nn.Linear's own initialisation (weight and bias uniform in ±1/√e), both times ``scale``."""
        layer = nn.Linear(E, E, dtype=torch.float64)
        with torch.no_grad():
            for param in (layer.weight, layer.bias):
                param.copy_((torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale / math.sqrt(E))
        return layer

    key, value = linear(sharpness), linear(1.0)
    memory = LongTermMemory(num_basis=N, past_samples=M, basis="gaussian", sigmas=SIGMAS, backend="torch",
                            check_finite=False)
    with torch.no_grad():
        for _ in range(CHUNKS):
            frames = torch.randn(1, L, E, generator=gen, dtype=torch.float64)
            query = torch.randn(1, Q, E, generator=gen, dtype=torch.float64)
            context = memory(frames, query, key, value, H)
    return memory.coefficients, query, key, value, context


def context(coef, query, key, value, const: Quadrature) -> torch.Tensor:
    """c [1, Q, D] with the rule ``const``, one head at a time (keeps [Q, nodes] small)."""
    with torch.no_grad():
        a = scores(coef, query, key, H)
        r = torch.cat([quadrature_weights(a[:, h:h + 1], const)[0] for h in range(H)], dim=1)
        return read_values(coef, r, value, H)


def row_errors(got: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """‖c − c*‖ / ‖c*‖ per query row."""
    return ((got - truth).norm(dim=-1) / truth.norm(dim=-1)).reshape(-1).tolist()


def measure(seeds: int) -> tuple[list[dict], list[str]]:
    cases = {(name, seed): memory_case(seed, sharp) for name, sharp in SHARPNESS.items() for seed in range(seeds)}
    notes = []
    truths = {}
    reference, check = (rule(*gauss_legendre(n, torch.linspace(0, 1, k + 1, dtype=torch.float64)))
                        for _, n, k in (REFERENCE, CHECK))
    worst = 0.0
    for key, (coef, query, pk, pv, own) in cases.items():
        truths[key] = context(coef, query, pk, pv, reference)
        worst = max(worst, max(row_errors(context(coef, query, pk, pv, check), truths[key])))
        with torch.no_grad():
            a = scores(coef, query, pk, H)
        mine = context(coef, query, pk, pv, attention_constants(
            MemoryConfig(num_basis=N, basis="gaussian", sigmas=SIGMAS)))
        own_gap = max(row_errors(own, mine))
        assert own_gap < 1e-12, f"the memory's own context differs from its default rule by {own_gap:.3g}"
        mu, sigma = gaussian_parameters(N, SIGMAS)
        s = a @ gaussian_values(torch.linspace(0, 1, 20001, dtype=torch.float64), mu, sigma).T
        notes.append(f"{key[0]} seed {key[1]}: s(t) spans [{float(s.min()):.1f}, {float(s.max()):.1f}] "
                     f"(median per-row range {float((s.amax(-1) - s.amin(-1)).median()):.1f})")
    if worst > AGREEMENT:
        raise SystemExit(f"the reference is not converged: {REFERENCE[0]} vs {CHECK[0]} differ by {worst:.3g}")
    notes.insert(0, f"converged: {REFERENCE[0]} on {REFERENCE[2]} panels ({REFERENCE[1] * REFERENCE[2]:,} nodes) "
                    f"vs {CHECK[0]} on {CHECK[2]} panels ({CHECK[1] * CHECK[2]:,} nodes): max row difference "
                    f"{worst:.2g}; the memory's own context equals its default rule (exact preset, T = 1,000: "
                    f"GL-8 on 125 panels) on its coefficients (< 1e-12)")
    rows = []
    for name, param, nodes, build in rules():
        const = build()
        errors = {density: [] for density in SHARPNESS}
        for (density, seed), (coef, query, pk, pv, _own) in cases.items():
            errors[density] += row_errors(context(coef, query, pk, pv, const), truths[(density, seed)])
        for density, errs in errors.items():
            rows.append(dict(density=density, rule=name, param=param, nodes=nodes, err_max=max(errs),
                             err_median=statistics.median(errs), rows=len(errs)))
    return rows, notes


def candidate(rows: list[dict]) -> dict | None:
    """The sharp-density row within TARGET (max over rows) with the fewest nodes."""
    ok = [r for r in rows if r["density"] == "sharp" and r["err_max"] <= TARGET]
    return min(ok, key=lambda r: (r["nodes"], r["err_max"])) if ok else None


def markdown(rows: list[dict], notes: list[str], seeds: int) -> str:
    names = list(dict.fromkeys(r["rule"] for r in rows))
    lines = ["# Gaussian continuous attention: context error vs quadrature nodes (float64, CPU)", "",
             f"N = {N}, sigmas {SIGMAS}, {CHUNKS} chunks, {seeds} seeds × {Q} queries per density; "
             f"error = ‖c − c*‖/‖c*‖ per query row, max / median over rows. "
             f"`python bench/quadrature_accuracy.py --seeds {seeds}`.", ""]
    lines += [f"- {note}" for note in notes] + [""]
    headers = ["rule", "parameter", "nodes", "random max", "random median", "sharp max", "sharp median"]
    table = []
    for name in names:
        mine = [r for r in rows if r["rule"] == name]
        for param in dict.fromkeys(r["param"] for r in mine):
            pair = {r["density"]: r for r in mine if r["param"] == param}
            table.append([name, param, pair["random"]["nodes"], f"{pair['random']['err_max']:.2e}",
                          f"{pair['random']['err_median']:.2e}", f"{pair['sharp']['err_max']:.2e}",
                          f"{pair['sharp']['err_median']:.2e}"])
    lines += [harness.markdown_table(headers, table), ""]
    best = candidate(rows)
    lines.append(f"Fewest nodes within {TARGET:g} (max over rows) on sharp densities: "
                 + (f"**{best['rule']}, {best['param']} ({best['nodes']:,} nodes)**, max {best['err_max']:.2e}."
                    if best else "none of the measured rules."))
    for name in names:
        ok = [r for r in rows if r["rule"] == name and r["density"] == "sharp" and r["err_max"] <= TARGET]
        if ok:
            first = min(ok, key=lambda r: r["nodes"])
            lines.append(f"- {name}: {first['param']} ({first['nodes']:,} nodes), max {first['err_max']:.2e}")
        else:
            lines.append(f"- {name}: not within {TARGET:g} at the measured sizes")
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict]) -> bool:
    plt = pyplot("the plot")
    if plt is None:
        return False
    names = list(dict.fromkeys(r["rule"] for r in rows))
    fig, axes = plt.subplots(1, len(SHARPNESS), figsize=(11, 4.6), layout="constrained", sharey=True)
    for ax, density in zip(axes, SHARPNESS):
        for i, name in enumerate(names):
            mine = sorted((r for r in rows if r["rule"] == name and r["density"] == density), key=lambda r: r["nodes"])
            x = [r["nodes"] for r in mine]
            centre = name.startswith("centre")  # drawn dashed: it lies on top of the uniform GL-4 line
            ax.plot(x, [r["err_max"] for r in mine], marker="s" if centre else "o", markersize=4, color=f"C{i}",
                    linestyle="--" if centre else "-", label=f"{name} (max)")
            ax.plot(x, [r["err_median"] for r in mine], linestyle=":", color=f"C{i}", label=f"{name} (median)")
        ax.axhline(TARGET, color="black", linestyle="--", linewidth=1, label=f"target {TARGET:g}")
        ax.axvline(1000, color="grey", linewidth=0.8, label="default T = 1,000")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{density} densities (key weights ×{SHARPNESS[density]:g})", fontsize=10)
        ax.set_xlabel("quadrature nodes")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative context error ‖c − c*‖/‖c*‖ per query")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"Gaussian basis N = {N}, σ = {SIGMAS}: error against a converged float64 integral", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--prefix", default="cpu_")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from-csv", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    stem = f"{args.prefix}quadrature_accuracy"
    if args.from_csv:
        rows, _ = harness.read_csv(args.from_csv)
        notes = []
    else:
        start = time.perf_counter()
        rows, notes = measure(args.seeds)
        notes.append(f"{time.perf_counter() - start:.0f} s on {harness.device_name(torch.device('cpu'))}")
        harness.write_csv(out / f"{stem}.csv", rows, harness.metadata(torch.device("cpu")))
        (out / f"{stem}.md").write_text(markdown(rows, notes, args.seeds))
    plot(out / f"{stem}.png", rows)
    print(markdown(rows, notes, args.seeds))


if __name__ == "__main__":
    main()
