"""Small hand-built SVG plots for the HTML report: no plotting library, no network, no scripts.

Every plot is an <svg class="plot" data-plot="NAME"> element with a <title>, so a test can find each one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

WIDTH, HEIGHT = 520, 300
MARGIN = {"left": 56, "right": 150, "top": 30, "bottom": 42}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _open(name: str, title: str, width: int = WIDTH, height: int = HEIGHT) -> list[str]:
    return [
        f'<svg class="plot" data-plot="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    step = (high - low) / count
    return [low + k * step for k in range(count + 1)]


def _axes(
    parts: list[str], x_range: tuple[float, float], y_range: tuple[float, float], x_label: str, y_label: str
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = WIDTH - MARGIN["right"], HEIGHT - MARGIN["bottom"]
    (x0, x1), (y0, y1) = x_range, y_range
    x1 = x1 if x1 > x0 else x0 + 1.0
    y1 = y1 if y1 > y0 else y0 + 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    parts.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>'
    )
    for t in _ticks(x0, x1):
        parts.append(
            f'<text x="{sx(t):.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10">{t:.3g}</text>'
        )
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" text-anchor="end" font-size="10">{t:.3g}</text>'
        )
    parts.append(
        f'<text x="{(left + right) / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{(top + bottom) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 14 {(top + bottom) / 2})">{escape(y_label)}</text>'
    )
    return sx, sy


def line_chart(
    name: str,
    title: str,
    series: dict[str, tuple[list[float], list[float]]],
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
) -> str:
    """One polyline per series (x, y); NaN points are skipped."""
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    parts = _open(name, title)
    xs_all = [p[0] for p in points] or [0.0, 1.0]
    ys_all = [p[1] for p in points] or [0.0, 1.0]
    sx, sy = _axes(parts, (min(xs_all), max(xs_all)), y_range or (min(ys_all), max(ys_all)), x_label, y_label)
    for k, (label, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        coords = " ".join(
            f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True) if not math.isnan(y)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        legend_y = MARGIN["top"] + 14 * k + 8
        parts.append(
            f'<rect x="{WIDTH - MARGIN["right"] + 8}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>'
        )
        parts.append(
            f'<text x="{WIDTH - MARGIN["right"] + 22}" y="{legend_y + 1}" font-size="11">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(name: str, title: str, bars: dict[str, float], y_label: str) -> str:
    """Vertical bars, one per label (values may be negative)."""
    parts = _open(name, title)
    values = list(bars.values()) or [0.0]
    low, high = min(0.0, *values), max(0.0, *values)
    sx, sy = _axes(
        parts, (0.0, float(max(len(bars), 1))), (low, high if high > low else low + 1.0), "", y_label
    )
    for k, (label, value) in enumerate(bars.items()):
        x_left, x_right = sx(k + 0.15), sx(k + 0.85)
        y_top, y_zero = sy(max(value, 0.0)), sy(min(value, 0.0))
        parts.append(
            f'<rect x="{x_left:.1f}" y="{y_top:.1f}" width="{x_right - x_left:.1f}" height="{max(y_zero - y_top, 0.5):.1f}" '
            f'fill="{COLOURS[k % len(COLOURS)]}"><title>{escape(label)}: {value:.4f}</title></rect>'
        )
        parts.append(
            f'<text x="{(x_left + x_right) / 2:.1f}" y="{HEIGHT - MARGIN["bottom"] + 28}" text-anchor="middle" '
            f'font-size="11">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(name: str, title: str, matrix: list[list[int]], labels: list[str]) -> str:
    """A confusion matrix: rows = true class, columns = predicted, counts written in the cells."""
    n = max(len(labels), 1)
    cell = max(18, min(44, 400 // n))
    left, top = 90, 50
    width, height = left + cell * n + 20, top + cell * n + 30
    parts = _open(name, title, width, height)
    peak = max((max(row) for row in matrix), default=1) or 1
    for i, row in enumerate(matrix):
        parts.append(
            f'<text x="{left - 4}" y="{top + cell * i + cell / 2 + 4}" text-anchor="end" font-size="10">{escape(labels[i])}</text>'
        )
        for j, count in enumerate(row):
            shade = 255 - int(200 * count / peak)
            parts.append(
                f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" '
                f'fill="rgb({shade},{shade},255)" stroke="#fff"><title>true {escape(labels[i])}, predicted '
                f"{escape(labels[j])}: {count}</title></rect>"
            )
            parts.append(
                f'<text x="{left + cell * j + cell / 2}" y="{top + cell * i + cell / 2 + 4}" '
                f'text-anchor="middle" font-size="10">{count}</text>'
            )
    for j, label in enumerate(labels):
        parts.append(
            f'<text x="{left + cell * j + cell / 2}" y="{top - 6}" text-anchor="middle" font-size="10">{escape(label)}</text>'
        )
    parts.append(
        f'<text x="{left + cell * n / 2}" y="{height - 8}" text-anchor="middle" font-size="11">rows: true class; columns: predicted</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)
