"""The post-mortem's SVG charts, from synthetic metrics records (the report's own tests
draw them from a real evaluator's journal)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from guardrails import charts
from guardrails.rollouts import Event

NS = "{http://www.w3.org/2000/svg}"
START = 1_700_000_000.0
CTR, P_BETTER, CALIBRATION = charts.CHARTS


def _timeline(n: int, span_s: float, **data: object) -> charts.Timeline:
    record = {"champion": {"ctr": 0.02, "calibration": 1.0}, "challenger": {"ctr": 0.021}, **data}
    samples = [Event(i, "r1", START + span_s * i / (n - 1), "metrics", 1, record) for i in range(n)]
    return charts.Timeline(samples, [(START + span_s / 2, 2)], START, (0.85, 1.15))


def test_svg_x_ticks_read_as_durations_since_the_start() -> None:
    svg = charts.svg(CTR, _timeline(10, 2 * 86_400))
    assert svg is not None
    ticks = re.findall(r'y="200" text-anchor="(?:middle|end)">([^<]+)<', svg)
    assert ticks == ["0s", "12h00m", "1d00h", "1d12h", "2d00h"]
    assert ">P2</text>" in svg  # the phase entry marker


def test_svg_thins_a_long_series_and_keeps_its_last_point() -> None:
    svg = charts.svg(CTR, _timeline(4000, 12 * 86_400))
    assert svg is not None
    first, _ = ET.fromstring(svg).findall(f"{NS}polyline")
    points = first.get("points", "").split()
    assert len(points) == charts.MAX_POINTS + 1
    assert points[-1].startswith("664.0,")  # the right edge: the last record


def test_svg_without_the_charted_numbers_is_none() -> None:
    # No record has p_better; the calibration chart still has the champion's line.
    t = _timeline(5, 3600)
    assert charts.svg(P_BETTER, t) is None
    assert charts.svg(CALIBRATION, t) is not None


def test_svg_shades_the_band_on_the_calibration_chart_only() -> None:
    rendered = {c.slug: svg for c, svg in charts.render(_timeline(5, 3600, p_better=0.6))}
    assert list(rendered) == ["ctr", "p-better", "calibration"]
    shaded = {slug for slug, svg in rendered.items() if svg is not None and "<rect" in svg}
    assert shaded == {"calibration"}
