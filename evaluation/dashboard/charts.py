"""Chart geometry for server-side SVG: lines of a metric against sparsity, bars of sparsity per layer.

Only numbers and labels are computed here; templates/charts.html draws them (so every label is escaped
by the template engine). No JavaScript: the charts render wherever the page does, offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]  # fmt: skip
WIDTH, HEIGHT = 760, 360
MARGIN = {"left": 78, "right": 20, "top": 16, "bottom": 48}
LOG_RATIO = 100.0  # auto scale: logarithmic when the largest value is this many times the smallest


@dataclass
class Box:
    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def plot_box(width: float = WIDTH, height: float = HEIGHT) -> Box:
    return Box(MARGIN["left"], MARGIN["top"], width - MARGIN["right"], height - MARGIN["bottom"])


@dataclass
class Scale:
    """Data values -> pixels along one axis (linear or log10)."""

    low: float
    high: float
    start: float
    end: float
    log: bool = False

    def _t(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def __call__(self, value: float) -> float:
        low, high = self._t(self.low), self._t(self.high)
        share = 0.5 if high == low else (self._t(value) - low) / (high - low)
        return round(self.start + share * (self.end - self.start), 2)

    def ticks(self) -> list[tuple[float, str]]:
        values = log_ticks(self.low, self.high) if self.log else nice_ticks(self.low, self.high)
        return [(self(v), tick_label(v)) for v in values if self.low <= v <= self.high]


def nice_step(span: float, count: int = 5) -> float:
    raw = span / count if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def nice_range(low: float, high: float) -> tuple[float, float]:
    """``low`` and ``high`` widened to whole steps (a flat range gets some room)."""
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = nice_step(high - low)
    return math.floor(low / step) * step, math.ceil(high / step) * step


def nice_ticks(low: float, high: float) -> list[float]:
    step = nice_step(high - low)
    first = math.ceil(low / step - 1e-9)
    return [round(i * step, 12) for i in range(first, int(math.floor(high / step + 1e-9)) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    every = max(1, math.ceil((last - first) / 8))
    return [10.0**p for p in range(first, last + 1, every)]


def tick_label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:g}"


def value_scale(values: list[float], start: float, end: float, scale: str = "auto") -> Scale:
    """A y scale over ``values``: ``log``, ``linear`` or ``auto`` (log when positive and spanning LOG_RATIO)."""
    low, high = min(values), max(values)
    log = scale == "log" or (scale == "auto" and low > 0 and high / low >= LOG_RATIO)
    if log and low <= 0:
        log = False  # a log axis cannot show zero or negative values
    if log:
        return Scale(10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high)), start, end, True)
    return Scale(*nice_range(low, high), start, end)


# ---- line chart ---------------------------------------------------------------------------------


@dataclass
class Point:
    x: float
    y: float
    label: str
    run_id: Any = None


@dataclass
class Line:
    name: str
    colour: str
    points: list[Point]

    @property
    def path(self) -> str:
        return " ".join(f"{p.x},{p.y}" for p in self.points)


@dataclass
class LineChart:
    box: Box
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    lines: list[Line]
    x_label: str
    y_label: str
    log: bool
    baseline: tuple[float, str] | None = None
    width: int = WIDTH
    height: int = HEIGHT


def line_chart(
    series: dict[str, list[tuple[float, float, Any]]],
    x_label: str,
    y_label: str,
    baseline: float | None = None,
    scale: str = "auto",
    x_from_zero: bool = True,
) -> LineChart | None:
    """One line per series of (x, y, run id) points; ``baseline`` a dashed horizontal line. None: nothing to draw."""
    xs = [x for points in series.values() for x, _, _ in points]
    ys = [y for points in series.values() for _, y, _ in points] + ([baseline] if baseline is not None else [])
    if not xs:
        return None
    box = plot_box()
    x_scale = Scale(*nice_range(0.0 if x_from_zero else min(xs), max(xs)), box.left, box.right)
    y_scale = value_scale(ys, box.bottom, box.top, scale)
    lines = [
        Line(name, PALETTE[i % len(PALETTE)],
             [Point(x_scale(x), y_scale(y), f"{name}: {tick_label(x)} -> {y:.6g}", run) for x, y, run in points])
        for i, (name, points) in enumerate(series.items())
    ]  # fmt: skip
    line = (y_scale(baseline), f"dense: {baseline:.6g}") if baseline is not None else None
    return LineChart(box, x_scale.ticks(), y_scale.ticks(), lines, x_label, y_label, y_scale.log, line)


# ---- bar chart of the allocation ----------------------------------------------------------------


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    tower: str
    label: str
    measured_y: float | None


@dataclass
class BarChart:
    box: Box
    bars: list[Bar]
    y_ticks: list[tuple[float, str]]
    towers: list[tuple[str, str]]
    target: tuple[float, str] | None = None
    width: int = WIDTH
    height: int = HEIGHT
    x_label: str = "layer (in pruning order)"
    y_label: str = "sparsity"
    extra: dict[str, Any] = field(default_factory=dict)


def allocation_chart(allocation: list[dict[str, Any]], target_sparsity: float | None = None) -> BarChart | None:
    """One bar per layer (its allocated sparsity, else the measured one), coloured by tower; ticks: measured."""
    rows = [row for row in allocation if (row["target"] if row["target"] is not None else row["measured"]) is not None]
    if not rows:
        return None
    box = plot_box()
    heights = [_bar_value(row) for row in rows] + [row["measured"] or 0 for row in rows]
    y_scale = Scale(0.0, min(1.0, nice_range(0.0, max(heights))[1]) or 1.0, box.bottom, box.top)
    towers = list(dict.fromkeys(row["tower"] or "-" for row in rows))
    colours = {tower: PALETTE[i % len(PALETTE)] for i, tower in enumerate(towers)}
    step = box.width / len(rows)
    bars = [_bar(row, box.left + i * step, step, y_scale, colours) for i, row in enumerate(rows)]
    target = None
    if target_sparsity:
        target = (y_scale(target_sparsity), f"target {target_sparsity:g}")
    return BarChart(box, bars, y_scale.ticks(), list(colours.items()), target)


def _bar_value(row: dict[str, Any]) -> float:
    return row["target"] if row["target"] is not None else row["measured"]


def _bar(row: dict[str, Any], x: float, step: float, y_scale: Scale, colours: dict[str, str]) -> Bar:
    top = y_scale(_bar_value(row))
    tower = row["tower"] or "-"
    measured = row["measured"]
    label = f"{row['layer']} ({tower}): target {_fmt(row['target'])}, measured {_fmt(measured)}"
    width = max(step - (1 if step > 3 else 0), 0.5)
    return Bar(round(x, 2), top, round(width, 2), round(y_scale.start - top, 2), colours[tower], tower, label,
               None if measured is None else y_scale(measured))  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def block_lines(series: dict[str, list[float | None]], ids: dict[str, Any] | None = None) -> LineChart | None:
    """The sparsity each series allocated to each block (x: the block's place in pruning order), one line each."""
    points = {
        name: [(i, value, (ids or {}).get(name)) for i, value in enumerate(values) if value is not None]
        for name, values in series.items()
    }
    points = {name: line for name, line in points.items() if line}
    return line_chart(points, "block (in pruning order)", "allocated sparsity", scale="linear") if points else None
