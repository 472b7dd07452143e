"""Pictures with matplotlib (the optional ``plot`` extra): the demo's view of the memory over a
video, and the benchmarks' line charts.

Without matplotlib, ``pyplot()`` says how to get it and returns None, and callers carry on
without the picture.
"""
from __future__ import annotations

import sys

import torch

INSTALL_HINT = 'pip install matplotlib (or the package\'s "plot" extra: pip install -e ".[plot]")'


def pyplot(what: str = "the picture"):
    """matplotlib.pyplot with a file-only backend, or None (after saying so on stderr) when absent."""
    try:
        import matplotlib
    except ImportError:
        print(f"infvideo: matplotlib is not installed, so {what} was skipped ({INSTALL_HINT})", file=sys.stderr)
        return None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def memory_time_to_frame(t: torch.Tensor, chunk: int, length: int, tau: float) -> torch.Tensor:
    """Video frame (float) of memory time t ∈ [0, 1] after chunk ``chunk`` (0-based) of ``length`` frames.

    After chunk k, [τ, 1] holds chunk k's frames and [0, τ] holds the memory of chunks 0 … k-1,
    squeezed by τ (SPEC section 6), so t is unfolded one chunk at a time.
    """
    frame = torch.zeros_like(t, dtype=torch.float64)
    t = t.to(torch.float64).clone()
    done = torch.zeros_like(t, dtype=torch.bool)
    for k in range(chunk, -1, -1):
        if k == 0:
            frame = torch.where(done, frame, t * length)
            break
        new = ~done & (t >= tau)
        frame = torch.where(new, k * length + (t - tau) / (1 - tau) * length, frame)
        done |= new
        t = torch.where(done, t, t / tau)
    return frame


def memory_picture(path: str, masses: list[torch.Tensor], samples: list[torch.Tensor | None], length: int,
                   tau: float, fps: float, title: str, events: list[int] = ()) -> bool:
    """Draw where the memory's attention lies in the video after each chunk; True if written.

    masses: per chunk, the attention mass of each of the N bins [N] (sums to 1); samples: per chunk,
    the bins [M] the next consolidation reads (sticky samples) or None. Rows are chunks, x is video
    time (frames below, seconds at ``fps`` above); a bin's mass is spread over the video frames its
    memory interval now stands for, so the colour is attention mass per frame. ``events``: frames
    to mark with dotted lines (the synthetic video's sharp events).
    """
    plt = pyplot("the demo's picture")
    if plt is None:
        return False
    from matplotlib.colors import LogNorm

    chunks = len(masses)
    rows = []
    for k, mass in enumerate(masses):
        n = mass.numel()
        edges = memory_time_to_frame(torch.linspace(0, 1, n + 1, dtype=torch.float64), k, length, tau)
        mass = mass.to(torch.float64) / mass.sum().clamp_min(1e-30)
        per_frame = mass / edges.diff().clamp_min(1e-12)
        rows.append((edges.numpy(), per_frame.numpy()))
    peak = max(float(r[1].max()) for r in rows)
    norm = LogNorm(vmin=peak * 1e-4, vmax=peak)
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.16 * chunks), layout="constrained")
    mesh = None
    for k, (edges, per_frame) in enumerate(rows):
        # The row's upper part shows the density, its lower strip the sticky samples.
        mesh = ax.pcolormesh(edges, [k - 0.5, k + 0.22], per_frame.clip(min=norm.vmin)[None, :], norm=norm,
                             cmap="viridis", shading="flat")
    for k, sample in enumerate(samples):
        if sample is not None:
            centres = memory_time_to_frame((sample.to(torch.float64) + 0.5) / masses[k].numel(), k, length, tau)
            ax.scatter(centres.numpy(), [k + 0.36] * centres.numel(), marker="|", s=14, linewidths=0.5,
                       color="crimson", label="sticky samples: where the next chunk reads the memory"
                       if k == chunks - 1 else None)
    if len(events):
        ax.vlines(events, -0.5, chunks - 0.5, colors="orange", linestyles=":", linewidth=1,
                  label="sharp events in the video")
    ax.set_xlim(0, chunks * length)
    ax.set_ylim(chunks - 0.5, -0.5)
    ax.set_xlabel("video time (frames)")
    ax.set_ylabel("memory after chunk")
    step = max(1, chunks // 12)
    ax.set_yticks(range(0, chunks, step), [str(k + 1) for k in range(0, chunks, step)])
    seconds = ax.secondary_xaxis("top", functions=(lambda f: f / fps, lambda s: s * fps))
    seconds.set_xlabel(f"video time (s at {fps:g} frames/s)")
    fig.colorbar(mesh, ax=ax, label="attention mass per frame", pad=0.01)
    if any(s is not None for s in samples) or len(events):
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)  # the empty corner: later chunks are not there yet
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def line_charts(path: str, panels: list[dict], suptitle: str | None = None) -> bool:
    """Panels of lines on log axes, side by side, one legend below them; True if written.

    Each panel: ``title``, ``xlabel``, ``ylabel``, ``lines`` {label: (x, y) or (x, y, error bar)} (one
    line per provider, the same colour in every panel), optionally ``floor`` (x, y) drawn dashed
    (the memory-bandwidth floor), ``log_x`` / ``log_y`` (default True), ``from_zero`` (a linear y
    axis starting at 0, so that flat reads as flat). Panels without a point are left out.
    """
    panels = [panel for panel in panels if any(len(line[0]) for line in panel["lines"].values())]
    plt = pyplot("the plot")
    if plt is None or not panels:
        return False
    from matplotlib.ticker import NullLocator

    labels = list(dict.fromkeys(label for panel in panels for label in panel["lines"]))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    alone = len(panels) == 1  # one panel: the legend goes to its right, where there is room
    fig, axes = plt.subplots(1, len(panels), figsize=(9.5, 4.6) if alone else (5.2 * len(panels), 4.4),
                             layout="constrained", squeeze=False)
    handles = {}
    for ax, panel in zip(axes[0], panels):
        for label, (x, y, *err) in panel["lines"].items():
            handles[label] = ax.errorbar(x, y, yerr=err[0] if err else None, marker="o", markersize=4, capsize=3,
                                         color=colours[label], label=label)
        if panel.get("floor") is not None:
            (handles["memory-bandwidth floor"],) = ax.plot(*panel["floor"], linestyle="--", color="black", linewidth=1)
        if panel.get("log_x", True):
            ax.set_xscale("log")
            xs = sorted({float(v) for x, *_ in panel["lines"].values() for v in x})
            if 0 < len(xs) <= 8:  # few sizes: tick exactly those, as plain numbers
                ax.set_xticks(xs, [f"{v:g}" for v in xs])
                ax.xaxis.set_minor_locator(NullLocator())
        if panel.get("from_zero"):
            ax.set_ylim(bottom=0, top=1.15 * max(max(y) for _, y, *_ in panel["lines"].values()))
        elif panel.get("log_y", True):
            ax.set_yscale("log")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper" if alone else "outside lower center",
               ncols=1 if alone else min(len(handles), 6), fontsize=9, frameon=False)
    if suptitle and alone:
        axes[0][0].set_title(f"{panels[0]['title']}\n{suptitle}", fontsize=10)
    elif suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
