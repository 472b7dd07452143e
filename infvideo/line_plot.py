"""Dependency-free line charts (several series, linear or log axes, error bars) as RGB images.

Used by the benchmarks to draw time, memory and retention curves without a plotting library;
:func:`infvideo.plot.write_png` writes the result. Text uses a small built-in 3×5 pixel font
(upper case, digits and a few signs), drawn at twice its size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Each glyph is five rows of three pixels ('#' set). Lower case is drawn as upper case.
_GLYPHS = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# ..# .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    " ": "... ... ... ... ...", ".": "... ... ... ... .#.", ",": "... ... ... .#. #..",
    "-": "... ... ### ... ...", "+": "... .#. ### .#. ...", "=": "... ### ... ### ...",
    "%": "#.# ..# .#. #.. #.#", "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.", ":": "... .#. ... .#. ...", "_": "... ... ... ... ###",
    "[": "##. #.. #.. #.. ##.", "]": ".## ..# ..# ..# .##", "×": "... #.# .#. #.# ...",
    "±": ".#. ### .#. ... ###", "?": "### ..# .#. ... .#.", "µ": "... #.# #.# ### #..",
    "^": ".#. #.# ... ... ...", "'": ".#. .#. ... ... ...", "|": ".#. .#. .#. .#. .#.",
}
_SCALE = 2
CHAR_WIDTH = 4 * _SCALE  # glyph plus one column of spacing
CHAR_HEIGHT = 5 * _SCALE

# Distinct, print-safe colours for up to eight series (then they repeat).
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (23, 190, 207), (140, 86, 75), (227, 119, 194)]
_INK = (40, 40, 40)
_GRID = (225, 225, 225)


@dataclass
class Series:
    """One line: points (x, y), optional symmetric error bars (same length as y)."""

    name: str
    x: list[float]
    y: list[float]
    errors: list[float] | None = None
    colour: tuple[int, int, int] | None = field(default=None)


def text_width(text: str) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text`."""
    return len(text) * CHAR_WIDTH


def draw_text(image: torch.Tensor, x: int, y: int, text: str, colour=_INK) -> None:
    """Draw ``text`` with its top-left corner at (x, y), clipped to the image."""
    height, width, _ = image.shape
    ink = torch.tensor(colour, dtype=torch.uint8)
    for index, char in enumerate(text):
        rows = _GLYPHS.get(char, _GLYPHS.get(char.upper(), _GLYPHS["?"])).split()
        left = x + index * CHAR_WIDTH
        for r, row in enumerate(rows):
            for c, bit in enumerate(row):
                if bit == "#":
                    top, col = y + r * _SCALE, left + c * _SCALE
                    if 0 <= top and top + _SCALE <= height and 0 <= col and col + _SCALE <= width:
                        image[top:top + _SCALE, col:col + _SCALE] = ink


def _dot(image: torch.Tensor, x: float, y: float, colour, radius: int = 1) -> None:
    height, width, _ = image.shape
    xi, yi = int(round(x)), int(round(y))
    image[max(0, yi - radius):min(height, yi + radius + 1), max(0, xi - radius):min(width, xi + radius + 1)] = \
        torch.tensor(colour, dtype=torch.uint8)


def _segment(image: torch.Tensor, x0: float, y0: float, x1: float, y1: float, colour, radius: int = 1) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for i in range(steps + 1):
        f = i / steps
        _dot(image, x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, colour, radius)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def format_number(value: float) -> str:
    """Short tick label: 1K, 250K, 1M for large values, %g otherwise."""
    if value == 0:
        return "0"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:.3g}"


class _Axis:
    """Maps data values to pixels along one axis (log10 when ``log``)."""

    def __init__(self, values: list[float], log: bool, start: int, end: int):
        self.log = log
        finite = [self._t(v) for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if log:
            lo, hi = math.floor(lo), math.ceil(hi)
        if hi - lo < 1e-12:
            lo, hi = lo - (1 if log else abs(lo) * 0.1 + 1), hi + (1 if log else abs(hi) * 0.1 + 1)
        if not log:
            pad = 0.05 * (hi - lo)
            lo, hi = (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad
        self.lo, self.hi, self.start, self.end = lo, hi, start, end

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def pixel(self, value: float) -> float:
        return self.start + (self._t(value) - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            # Few decades: 2× and 5× ticks too, so a short axis still reads.
            steps = (1, 2, 5) if self.hi - self.lo <= 2 else (1,)
            return [m * 10.0 ** k for k in range(int(self.lo), int(self.hi) + 1) for m in steps
                    if math.log10(m) + k <= self.hi + 1e-9]
        return _nice_ticks(self.lo, self.hi)

    def usable(self, value) -> bool:
        return value is not None and math.isfinite(value) and (value > 0 or not self.log)


def line_chart(series: list[Series], title: str, x_label: str, y_label: str, log_x: bool = False,
               log_y: bool = False, width: int = 760, height: int = 420) -> torch.Tensor:
    """RGB image [height, width, 3] uint8: the series as lines with markers, a legend on the right.

    Points whose value cannot be placed (None, NaN, or ≤ 0 on a log axis) are left out.
    """
    legend = max((text_width(s.name) for s in series), default=0) + 36
    left, right, top, bottom = 70, width - legend, 44, height - 40
    image = torch.full((height, width, 3), 255, dtype=torch.uint8)
    xs = [v for s in series for v in s.x]
    ys = [v for s in series for v in s.y]
    ys += [y + e for s in series if s.errors for y, e in zip(s.y, s.errors) if y is not None and e is not None]
    ys += [y - e for s in series if s.errors for y, e in zip(s.y, s.errors)
           if y is not None and e is not None and (y - e > 0 or not log_y)]
    x_axis, y_axis = _Axis(xs, log_x, left, right), _Axis(ys, log_y, bottom, top)
    for tick in x_axis.ticks():
        px = int(round(x_axis.pixel(tick)))
        if left <= px <= right:
            image[top:bottom, px] = torch.tensor(_GRID, dtype=torch.uint8)
            label = format_number(tick)
            draw_text(image, px - text_width(label) // 2, bottom + 6, label)
    for tick in y_axis.ticks():
        py = int(round(y_axis.pixel(tick)))
        if top <= py <= bottom:
            image[py, left:right] = torch.tensor(_GRID, dtype=torch.uint8)
            label = format_number(tick)
            draw_text(image, left - 6 - text_width(label), py - CHAR_HEIGHT // 2, label)
    frame = torch.tensor(_INK, dtype=torch.uint8)
    image[top, left:right + 1] = image[bottom, left:right + 1] = frame
    image[top:bottom + 1, left] = image[top:bottom + 1, right] = frame
    draw_text(image, 4, 6, title)
    draw_text(image, (left + right - text_width(x_label)) // 2, height - 16, x_label)
    draw_text(image, 4, top - CHAR_HEIGHT - 6, y_label)
    for index, s in enumerate(series):
        colour = s.colour or PALETTE[index % len(PALETTE)]
        points = [(x_axis.pixel(x), y_axis.pixel(y), i) for i, (x, y) in enumerate(zip(s.x, s.y))
                  if x_axis.usable(x) and y_axis.usable(y)]
        for (x0, y0, _), (x1, y1, _) in zip(points, points[1:]):
            _segment(image, x0, y0, x1, y1, colour)
        for px, py, i in points:
            _dot(image, px, py, colour, radius=3)
            error = s.errors[i] if s.errors else None
            if error:
                y_hi = s.y[i] + error
                y_lo = s.y[i] - error
                p_hi = y_axis.pixel(y_hi)
                p_lo = y_axis.pixel(y_lo) if y_axis.usable(y_lo) else bottom
                _segment(image, px, max(top, min(bottom, p_lo)), px, max(top, min(bottom, p_hi)), colour, radius=0)
                for py_end in (p_lo, p_hi):
                    if top <= py_end <= bottom:
                        _segment(image, px - 4, py_end, px + 4, py_end, colour, radius=0)
        ly = top + 4 + index * (CHAR_HEIGHT + 8)
        image[ly + 2:ly + CHAR_HEIGHT - 2, right + 10:right + 26] = torch.tensor(colour, dtype=torch.uint8)
        draw_text(image, right + 30, ly, s.name)
    return image


def stack(images: list[torch.Tensor], gap: int = 8) -> torch.Tensor:
    """Images one above the other on white, left-aligned (widths may differ)."""
    width = max(img.shape[1] for img in images)
    height = sum(img.shape[0] for img in images) + gap * (len(images) - 1)
    out = torch.full((height, width, 3), 255, dtype=torch.uint8)
    row = 0
    for img in images:
        out[row:row + img.shape[0], :img.shape[1]] = img
        row += img.shape[0] + gap
    return out
