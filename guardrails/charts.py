"""The post-mortem's charts: CTR per arm, P(challenger better) and calibration over the
rollout, as line charts in self-contained SVG (phase entries as dashed markers, the
calibration band shaded). The one renderer for both report formats: HTML inlines the
SVG, Markdown links the same SVG written to files next to it. No plotting library: the
report works with the shipped dependencies alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from guardrails.rollouts import Event
from guardrails.units import duration

MAX_POINTS = 500  # a 12-day rollout logged every minute thinned to this per line
# Text styles live inside each chart, so a chart file looks the same as the inline chart.
_STYLE = "text{font:11px sans-serif}text.t{font-weight:600;font-size:13px}"


@dataclass
class Timeline:
    """What the charts draw: the rollout's "metrics" records and its phase entries."""

    samples: list[Event]
    phases: list[tuple[float, int]]  # (entered, phase number), drawn as vertical markers
    start: float
    band: tuple[float, float]  # the calibration guardrail's band, shaded


Line = tuple[str, str, tuple[str, ...]]  # legend, colour, path into a metrics record
Points = list[tuple[float, float]]


@dataclass(frozen=True)
class Chart:
    slug: str  # names the chart's file: <report>-<slug>.svg
    title: str
    lines: tuple[Line, ...]
    percent: bool = False
    fixed: tuple[float, float] | None = None  # the y range, else the data's
    banded: bool = False  # shade the timeline's calibration band


CHAMPION, CHALLENGER, GREEN = "#1f77b4", "#d62728", "#2ca02c"
CHARTS = (
    Chart(
        "ctr",
        "CTR per arm",
        (
            ("champion", CHAMPION, ("champion", "ctr")),
            ("challenger", CHALLENGER, ("challenger", "ctr")),
        ),
        percent=True,
    ),
    Chart(
        "p-better",
        "P(challenger better)",
        (("P(challenger better)", GREEN, ("p_better",)),),
        fixed=(0.0, 1.0),
    ),
    Chart(
        "calibration",
        "Calibration: predicted / actual clicks",
        (
            ("challenger", CHALLENGER, ("challenger", "calibration")),
            ("champion", CHAMPION, ("champion", "calibration")),
        ),
        banded=True,
    ),
)


def series(samples: list[Event], path: tuple[str, ...]) -> Points:
    """(time, value) of one number in each metrics record that has it."""
    points = []
    for e in samples:
        v: Any = e.data
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, int | float):
            points.append((e.t, float(v)))
    return points


def svg(chart: Chart, t: Timeline) -> str | None:
    """One line chart over rollout time, x ticks as time since the rollout started; None when
    no record has its numbers."""
    w, h, left, right, top, bottom = 680, 210, 64, 16, 30, 30
    lines = [(name, color, series(t.samples, path)) for name, color, path in chart.lines]
    band = t.band if chart.banded else None
    title = html.escape(chart.title)
    pts = [p for _, _, ps in lines for p in ps]
    if not pts:
        return None
    x0, x1 = t.start, max([p[0] for p in pts] + [entered for entered, _ in t.phases])
    ys = [p[1] for p in pts] + (list(band) if band else [])
    y0, y1 = chart.fixed or (min(ys), max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-6)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{title}"><title>{title}</title>'
        f'<style>{_STYLE}</style><text x="{left}" y="16" class="t">{title}</text>'
    ]
    if band:
        out.append(
            f'<rect x="{left}" y="{sy(band[1]):.1f}" width="{w - left - right}" '
            f'height="{sy(band[0]) - sy(band[1]):.1f}" fill="{GREEN}" opacity="0.13"/>'
        )
    for i in range(5):
        y, x = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        label = f"{y * 100:.2f}%" if chart.percent else f"{y:.3g}"
        tick = "end" if i == 4 else "middle"  # the last time label ends at the plot's edge
        out.append(
            f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">'
            f'{label}</text><text x="{sx(x):.1f}" y="{h - 10}" text-anchor="{tick}">'
            f"{duration(x - x0)}</text>"
        )
    for entered, phase in t.phases:
        x = sx(entered)
        at, anchor = (x + 3, "start") if x < w - right - 30 else (x - 3, "end")
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#888" '
            f'stroke-dasharray="4 3"/><text x="{at:.1f}" y="{top + 10}" fill="#666" '
            f'text-anchor="{anchor}">P{phase}</text>'
        )
    for n, (name, color, ps) in enumerate(lines):
        step = max(1, len(ps) // MAX_POINTS)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps[::step] + ps[-1:])
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>'
            f'<text x="{w - right - 150 * (len(lines) - 1 - n)}" y="16" fill="{color}" '
            f'text-anchor="end">━ {html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def render(t: Timeline) -> list[tuple[Chart, str | None]]:
    """Every chart of the post-mortem with its SVG (None: no data)."""
    return [(chart, svg(chart, t)) for chart in CHARTS]
