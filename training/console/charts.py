"""Server-rendered SVG charts for the console: line, bar, scatter, heatmap and interval plots.

No JavaScript and nothing from a CDN: each function returns a self-contained ``<svg>`` string,
marked safe only after every label, title and number in it has been escaped here. Labels can be
checkpoint names, usernames or metric keys that other people chose, so nothing is trusted.
The SVG scales to its container (``viewBox`` plus ``width: 100%``) and carries ``role="img"``
with an ``aria-label``; each point, bar and cell has a ``<title>`` tooltip.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#3755d4", "#e8590c", "#067647", "#9c36b5", "#b54708", "#0b7285")
INK, MUTED, GRID = "#1d2330", "#667085", "#e3e6ee"
FONT = 'font-family="system-ui, sans-serif"'
MAX_POINTS = 400  # a line with more points is thinned evenly (first and last kept)


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str = ""
    dots: bool = False


@dataclass(frozen=True)
class HLine:
    y: float
    label: str
    color: str = "#b54708"


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    label: str


def _num(value: float, percent: bool = False) -> str:
    if percent:
        return f"{value * 100:.0f}%" if abs(value) >= 0.1 or value == 0 else f"{value * 100:.1f}%"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10000 or magnitude < 0.001:
        return f"{value:.2g}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _svg(width: int, height: int, title: str, body: list[str]) -> SafeString:
    label = escape(title)
    return mark_safe(  # noqa: S308 - every piece of text in body was escaped by this module
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{label}" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg" {FONT} font-size="12">'
        f"<title>{label}</title>" + "".join(body) + "</svg>"
    )


def _empty(width: int, height: int, title: str, message: str) -> SafeString:
    return _svg(width, height, title, [
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" fill="{MUTED}">{escape(message)}</text>'
    ])


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    points = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if len(points) <= MAX_POINTS:
        return points
    stride = (len(points) - 1) / (MAX_POINTS - 1)
    return [points[round(i * stride)] for i in range(MAX_POINTS)]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    hlines: Sequence[HLine] = (),
    bands: Sequence[Band] = (),
    y_min: float | None = None,
    y_max: float | None = None,
    percent: bool = False,
    width: int = 640,
    height: int = 240,
    empty: str = "No data yet",
) -> SafeString:
    """Lines (with optional dots) over a shared numeric x axis, plus horizontal reference lines and bands."""
    lines = [(s, _thin(s.points)) for s in series]
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    if not xs:
        return _empty(width, height, title, empty)
    ys_all = ys + [h.y for h in hlines] + [v for b in bands for v in (b.low, b.high)]
    low = min(ys_all) if y_min is None else y_min
    high = max(ys_all) if y_max is None else y_max
    if high - low < 1e-12:
        low, high = low - (abs(low) * 0.1 or 1.0), high + (abs(high) * 0.1 or 1.0)
    y_ticks = nice_ticks(low, high, 4)
    low, high = min(low, y_ticks[0]), max(high, y_ticks[-1])
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    left, right, top, bottom = 56, 16, 28, 40 if x_label else 28
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (high - y) / (high - low) * plot_h

    body = [f'<text x="{left}" y="16" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for band in bands:
        y1, y2 = py(min(max(band.high, low), high)), py(min(max(band.low, low), high))
        body.append(
            f'<rect x="{left}" y="{y1:.1f}" width="{plot_w}" height="{max(0.0, y2 - y1):.1f}" fill="#fff3e0">'
            f"<title>{escape(band.label)}</title></rect>"
            f'<text x="{left + 4}" y="{y1 + 12:.1f}" fill="{MUTED}" font-size="10">{escape(band.label)}</text>'
        )
    for tick in y_ticks:
        y = py(tick)
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">{escape(_num(tick, percent))}</text>'
        )
    for tick in nice_ticks(x_low, x_high, 5):
        if x_low <= tick <= x_high:
            body.append(
                f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="{MUTED}">'
                f"{escape(_num(tick))}</text>"
            )
    if x_label:
        body.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="{MUTED}">{escape(x_label)}</text>'
        )
    if y_label:
        body.append(
            f'<text transform="translate(12 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
            f'fill="{MUTED}">{escape(y_label)}</text>'
        )
    for h in hlines:
        if low <= h.y <= high:
            y = py(h.y)
            body.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{escape(h.color)}" '
                f'stroke-dasharray="6 4" stroke-width="1.5"><title>{escape(h.label)}</title></line>'
                f'<text x="{left + plot_w - 4}" y="{y - 5:.1f}" text-anchor="end" fill="{escape(h.color)}">'
                f"{escape(h.label)}</text>"
            )
    for index, (s, pts) in enumerate(lines):
        color = escape(s.color or PALETTE[index % len(PALETTE)])
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        if s.dots or len(pts) == 1:
            for x, y in pts:
                body.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}">'
                    f"<title>{escape(s.label)}: {escape(_num(x))} → {escape(_num(y, percent))}</title></circle>"
                )
    if len(lines) > 1:
        x = left
        for index, (s, _) in enumerate(lines):
            color = escape(s.color or PALETTE[index % len(PALETTE)])
            body.append(
                f'<rect x="{x + 200}" y="7" width="10" height="10" fill="{color}"/>'
                f'<text x="{x + 214}" y="16" fill="{MUTED}">{escape(s.label)}</text>'
            )
            x += 24 + 7 * len(s.label)
    return _svg(width, height, title, body)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    percent: bool = False,
    color: str = PALETTE[0],
    hlines: Sequence[HLine] = (),
    width: int = 640,
    height: int = 220,
    every_label: int = 0,
    empty: str = "No data yet",
) -> SafeString:
    """Vertical bars from ``(label, value)``; ``every_label`` shows every n-th x label (0: as many as fit)."""
    if not bars:
        return _empty(width, height, title, empty)
    high = max([v for _, v in bars] + [h.y for h in hlines] + [0.0])
    ticks = nice_ticks(0.0, high or 1.0, 4)
    high = ticks[-1]
    left, right, top, bottom = 48, 12, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(bars)
    stride = every_label or max(1, math.ceil(len(bars) * 60 / plot_w))
    body = [f'<text x="{left}" y="16" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for tick in ticks:
        y = top + plot_h - tick / high * plot_h
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">{escape(_num(tick, percent))}</text>'
        )
    for index, (label, value) in enumerate(bars):
        h = max(0.0, value) / high * plot_h
        x = left + index * slot
        body.append(
            f'<rect x="{x + slot * 0.12:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.76:.1f}" height="{h:.1f}" '
            f'fill="{escape(color)}" rx="2"><title>{escape(label)}: {escape(_num(value, percent))}</title></rect>'
        )
        if index % stride == 0:
            body.append(
                f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="{MUTED}" '
                f'font-size="11">{escape(label)}</text>'
            )
    for h in hlines:
        y = top + plot_h - h.y / high * plot_h
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{escape(h.color)}" '
            f'stroke-dasharray="6 4"><title>{escape(h.label)}</title></line>'
        )
    return _svg(width, height, title, body)


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    marked: bool = False  # drawn in the warning colour, with a ring


def scatter_chart(points: Sequence[Point], *, title: str, x_label: str, y_label: str, y_percent: bool = False,
                  hlines: Sequence[HLine] = (), width: int = 640, height: int = 300,
                  empty: str = "No data yet") -> SafeString:
    """Labelled points on numeric axes (a marked point in the warning colour); a ``<title>`` on each."""
    points = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    if not points:
        return _empty(width, height, title, empty)
    xs, ys = [p.x for p in points], [p.y for p in points] + [h.y for h in hlines]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, 5), nice_ticks(
        min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1, 4)
    x_low, x_high, low, high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    left, right, top, bottom = 56, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / ((x_high - x_low) or 1.0) * plot_w

    def py(y: float) -> float:
        return top + (high - y) / ((high - low) or 1.0) * plot_h

    body = [f'<text x="{left}" y="16" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for tick in y_ticks:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="{GRID}"/>'
                    f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end" fill="{MUTED}">'
                    f"{escape(_num(tick, y_percent))}</text>")
    for tick in x_ticks:
        body.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="{MUTED}">'
                    f"{escape(_num(tick))}</text>")
    body.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="{MUTED}">'
                f"{escape(x_label)}</text>"
                f'<text transform="translate(12 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
                f'fill="{MUTED}">{escape(y_label)}</text>')
    for h in hlines:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(h.y):.1f}" y2="{py(h.y):.1f}" '
                    f'stroke="{escape(h.color)}" stroke-dasharray="6 4"><title>{escape(h.label)}</title></line>')
    for p in points:
        color = PALETTE[1] if p.marked else PALETTE[0]
        ring = f' stroke="{PALETTE[1]}" stroke-width="2" fill-opacity="0.35"' if p.marked else ""
        body.append(f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="{7 if p.marked else 5}" fill="{color}"{ring}'
                    f'{" data-marked" if p.marked else ""}><title>{escape(p.label)}: {escape(_num(p.x))}, '
                    f"{escape(_num(p.y, y_percent))}</title></circle>"
                    f'<text x="{px(p.x) + 9:.1f}" y="{py(p.y) + 4:.1f}" fill="{INK}" font-size="11">'
                    f"{escape(_short(p.label))}</text>")
    return _svg(width, height, title, body)


def _heat(value: float) -> str:
    """White-to-blue below a half, white-to-orange above: 0.5 (even) is white."""
    t = max(0.0, min(1.0, value))
    if t >= 0.5:
        k = (t - 0.5) * 2
        r, g, b = 255 - 23 * k, 255 - 166 * k, 255 - 243 * k
    else:
        k = (0.5 - t) * 2
        r, g, b = 255 - 200 * k, 255 - 170 * k, 255 - 43 * k
    return f"rgb({r:.0f},{g:.0f},{b:.0f})"


def heatmap(
    labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    title: str,
    counts: Sequence[Sequence[int]] | None = None,
    percent: bool = True,
    cell: int = 56,
    empty: str = "No data yet",
) -> SafeString:
    """A square matrix: row i, column j holds ``values[i][j]`` (None: an empty grey cell)."""
    if not labels:
        return _empty(480, 120, title, empty)
    gutter = min(200, 24 + 7 * max(len(str(label)) for label in labels))
    top = 44 + gutter // 2
    size = len(labels) * cell
    width, height = max(gutter + size + 12, 16 + 7 * len(title)), top + size + 12
    body = [f'<text x="8" y="16" fill="{INK}" font-weight="600">{escape(title)}</text>']
    for j, label in enumerate(labels):
        x = gutter + j * cell + cell / 2
        body.append(
            f'<text transform="translate({x:.0f} {top - 6}) rotate(-35)" fill="{MUTED}" font-size="11">'
            f"{escape(_short(label))}<title>{escape(label)}</title></text>"
        )
    for i, row_label in enumerate(labels):
        y = top + i * cell
        body.append(
            f'<text x="{gutter - 6}" y="{y + cell / 2 + 4:.0f}" text-anchor="end" fill="{INK}" font-size="11">'
            f"{escape(_short(row_label))}<title>{escape(row_label)}</title></text>"
        )
        for j, value in enumerate(values[i]):
            x = gutter + j * cell
            games = counts[i][j] if counts else None
            if value is None:
                body.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="#f2f4f7"/>')
                continue
            tip = f"{labels[i]} vs {labels[j]}: {_num(value, percent)}" + (f" of {games} games" if games else "")
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{_heat(value)}">'
                f"<title>{escape(tip)}</title></rect>"
                f'<text x="{x + cell / 2 - 1:.0f}" y="{y + cell / 2 + 4:.0f}" text-anchor="middle" fill="{INK}">'
                f"{escape(_num(value, percent))}</text>"
            )
    return _svg(width, height, title, body)


def interval_chart(
    rows: Sequence[tuple[str, float, float, float]],
    *,
    title: str,
    highlight: str | None = None,
    width: int = 640,
    empty: str = "No data yet",
) -> SafeString:
    """A forest plot: one row per ``(label, estimate, lower, upper)``; ``highlight`` draws that row in orange."""
    if not rows:
        return _empty(width, 120, title, empty)
    row_h, top = 26, 34
    gutter = min(220, 24 + 7 * max(len(label) for label, *_ in rows))
    height = top + row_h * len(rows) + 28
    low = min(r[2] for r in rows)
    high = max(r[3] for r in rows)
    ticks = nice_ticks(low, high, 5)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    plot_w = width - gutter - 16

    def px(x: float) -> float:
        return gutter + (x - low) / ((high - low) or 1.0) * plot_w

    body = [f'<text x="8" y="16" fill="{INK}" font-weight="600">{escape(title)}</text>']
    bottom = top + row_h * len(rows)
    for tick in ticks:
        body.append(
            f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top}" y2="{bottom}" stroke="{GRID}"/>'
            f'<text x="{px(tick):.1f}" y="{bottom + 16}" text-anchor="middle" fill="{MUTED}">{escape(_num(tick))}</text>'
        )
    for index, (label, estimate, lower, upper) in enumerate(rows):
        y = top + index * row_h + row_h / 2
        color = PALETTE[1] if label == highlight else PALETTE[0]
        tip = f"{label}: {estimate:.0f} (95% {lower:.0f}–{upper:.0f})"
        body.append(
            f'<text x="{gutter - 8}" y="{y + 4:.0f}" text-anchor="end" fill="{INK}">{escape(_short(label, 28))}</text>'
            f'<line x1="{px(lower):.1f}" x2="{px(upper):.1f}" y1="{y:.0f}" y2="{y:.0f}" stroke="{color}" stroke-width="3">'
            f"<title>{escape(tip)}</title></line>"
            f'<circle cx="{px(estimate):.1f}" cy="{y:.0f}" r="5" fill="{color}"><title>{escape(tip)}</title></circle>'
        )
    return _svg(width, height, title, body)


def _short(label, limit: int = 22) -> str:
    text = str(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"
