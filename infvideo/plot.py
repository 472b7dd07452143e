"""A dependency-free picture of the memory over a video: attention density and sticky samples.

Rows are chunks, columns are the video's frames; a row shows where, in video time, the memory's
attention mass lay after that chunk, and bright ticks where the next consolidation's sticky samples
read the old signal. Memory time is mapped back to video time through the consolidation's
geometry: after chunk k, [τ, 1] holds chunk k's frames and [0, τ] holds the memory of chunks
0 … k-1, squeezed by τ. PNG is written with zlib alone (no plotting library needed).
"""
from __future__ import annotations

import struct
import zlib

import torch


def memory_time_to_frame(t: torch.Tensor, chunk: int, length: int, tau: float) -> torch.Tensor:
    """Video frame index (float) of memory time t ∈ [0, 1] after chunk ``chunk`` (0-based) of ``length`` frames."""
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


def _colour(values: torch.Tensor) -> torch.Tensor:
    """Dark blue → teal → yellow for values in [0, 1]: [..., 3] uint8."""
    stops = torch.tensor([[13, 8, 60], [33, 145, 140], [253, 231, 37]], dtype=torch.float64)
    x = values.clamp(0, 1) * 2
    low = x.floor().clamp(max=1).long()
    frac = (x - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).round().to(torch.uint8)


def density_image(masses: list[torch.Tensor], samples: list[torch.Tensor | None], length: int, tau: float,
                  width: int = 1024, row_height: int = 6) -> torch.Tensor:
    """RGB image [H, W, 3] uint8 from per-chunk bin masses [N] and sticky sample bins [M] (or None)."""
    chunks = len(masses)
    total = chunks * length
    image = torch.zeros(chunks * row_height, width, 3, dtype=torch.uint8)
    for k, (mass, sample) in enumerate(zip(masses, samples)):
        n = mass.numel()
        edges = memory_time_to_frame(torch.linspace(0, 1, n + 1), k, length, tau)
        lo = (edges[:-1] / total * width).long().clamp(0, width - 1)
        hi = (edges[1:] / total * width).ceil().long().clamp(1, width)
        density = torch.zeros(width, dtype=torch.float64)
        for bin_ in range(n):
            a, b = int(min(lo[bin_], hi[bin_] - 1)), int(max(lo[bin_] + 1, hi[bin_]))
            span = max(1, abs(b - a))
            density[min(a, b):max(a, b)] += float(mass[bin_]) / span
        density = (density / density.max().clamp_min(1e-30)).sqrt()
        row = _colour(density)
        rows = slice(k * row_height, (k + 1) * row_height)
        image[rows] = row
        if sample is not None:
            centres = memory_time_to_frame((sample.to(torch.float64) + 0.5) / n, k, length, tau)
            cols = (centres / total * width).long().clamp(0, width - 1)
            image[k * row_height + row_height - 2:(k + 1) * row_height, cols] = 255
    return image


def write_png(path: str, image: torch.Tensor) -> None:
    """Write an RGB uint8 image [H, W, 3] as a PNG file."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[r].contiguous().numpy().tobytes() for r in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                 + chunk(b"IEND", b""))
