"""The post-mortem of one rollout, written from the journal alone (it works after the
server is gone): header, phases, every decision with the guardrails and metrics that
drove it, the breach, alert deliveries, and CTR and calibration over the rollout.

The content is built once as a list of blocks; Markdown and HTML are two small
emitters over it. HTML is self-contained (inline CSS and hand-written SVG, no script).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from guardrails.rollouts import Event, Journal, Rollout

Format = Literal["md", "html"]
DECISIONS = ("advanced", "paused", "resumed", "rolled_back", "stopped", "promoted")
ENDINGS = ("rolled_back", "stopped", "promoted")
MAX_SVG_POINTS = 500  # a 12-day rollout logged every minute thinned to this per line
TEXT_ROWS = 12


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Facts:
    pairs: list[tuple[str, str]]


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    marks: list[str]  # per row, its class: a guardrail state, a phase result, or ""


@dataclass
class Note:
    text: str
    breach: bool = False


@dataclass
class Charts:
    samples: list[Event]  # the "metrics" records
    phases: list[tuple[float, int]]  # (entered, phase number), drawn as vertical markers
    start: float
    band: tuple[float, float]  # the calibration guardrail's band, shaded


Block = Heading | Facts | Table | Note | Charts


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    d, rest = divmod(s, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d} d {h} h"
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def _key_metrics(m: dict[str, Any]) -> str:
    arms = [
        f"{arm} CTR {_pct(a.get('ctr'), 3)} ({a.get('clicks', 0)} clicks / "
        f"{a.get('impressions', 0)} impressions, {a.get('errors', 0)} errors)"
        for arm, a in ((arm, m.get(arm) or {}) for arm in ("champion", "challenger"))
    ]
    ch = m.get("challenger") or {}
    return "; ".join(
        [
            *arms,
            f"P(better) {_num(m.get('p_better'))}, P(worse) {_num(m.get('p_worse'))}",
            f"uplift {_pct(m.get('uplift'), 1)} "
            f"[{_pct(m.get('uplift_low'), 1)}, {_pct(m.get('uplift_high'), 1)}]",
            f"challenger calibration {_num(ch.get('calibration'))}, "
            f"p99 {_num(ch.get('p99_ms'))} ms",
        ]
    )


def _decision_title(e: Event) -> str:
    if e.kind == "advanced":
        return f"advanced to phase {e.phase} ({e.data.get('split_bp', 0) / 100:g}%)"
    verb = {"rolled_back": "rolled back"}.get(e.kind, e.kind)
    return f"{verb} in phase {e.phase}" + (" (manual)" if e.data.get("manual") else "")


def _blocks(r: Rollout, events: list[Event]) -> list[Block]:
    started = next((e.data for e in events if e.kind == "started"), {})
    end = next((e for e in reversed(events) if e.kind in ENDINGS), None)
    last = r.ended or (events[-1].t if events else r.started)
    out: list[Block] = [
        Heading(
            1,
            f"Rollout {r.id}: {started.get('challenger', r.challenger)} "
            f"vs {started.get('champion', r.champion)}",
        ),
        Facts(
            [
                ("Outcome", r.outcome or f"{r.state.value} (in progress)"),
                ("Reason", r.reason or "-"),
                ("Started", when(r.started)),
                ("Ended", when(r.ended)),
                ("Total duration", duration(last - r.started)),
                ("Last phase", str(r.phase)),
            ]
        ),
    ]
    if end is not None and end.data.get("manual"):
        out.append(Note(f"Manual decision: {_decision_title(end)}", breach=True))
    elif end is not None and end.kind != "promoted" and end.data.get("guardrail"):
        d = end.data
        out.append(
            Note(
                f"Breach in phase {end.phase} at {when(end.t)}: guardrail {d['guardrail']} = "
                f"{_num(d.get('value'))}, threshold {d.get('threshold') or '-'}",
                breach=True,
            )
        )
    phases = [
        [
            str(p["phase"]),
            when(p["entered"]),
            when(p["exited"]),
            duration((p["exited"] or last) - p["entered"]),
            p["result"],
        ]
        for p in r.phases
    ]
    out += [
        Heading(2, "Phases"),
        Table(["phase", "entered", "exited", "duration", "result"], phases, [r[4] for r in phases]),
        Heading(2, "Decisions"),
    ]
    for e in (e for e in events if e.kind in DECISIONS):
        out.append(Heading(3, f"{when(e.t)}: {_decision_title(e)}"))
        if e.data.get("reason"):
            out.append(Note(f"Reason: {e.data['reason']}"))
        if e.data.get("metrics"):
            out.append(Note(f"Metrics: {_key_metrics(e.data['metrics'])}"))
        if e.data.get("guardrails"):
            results = e.data["guardrails"]
            rows = [[g["name"], _num(g["value"]), g["threshold"], g["state"]] for g in results]
            head = ["guardrail", "value", "threshold", "state"]
            out.append(Table(head, rows, [g["state"] for g in results]))
    alerts = [e.data for e in events if e.kind == "alert"]
    if alerts:
        rows = [
            [a["kind"], a["target"], a["outcome"], str(a["attempts"]), a["last_error"] or ""]
            for a in alerts
        ]
        marks = ["pass" if a["outcome"] == "delivered" else "fail" for a in alerts]
        out += [
            Heading(2, "Alert deliveries"),
            Table(["alert", "target", "outcome", "attempts", "last error"], rows, marks),
        ]
    samples = [e for e in events if e.kind == "metrics"]
    entries = [(p["entered"], p["phase"]) for p in r.phases if p["phase"] > 1]
    band = _calibration_band([e for e in events if e.kind in DECISIONS])
    out.append(Heading(2, "CTR and calibration over the rollout"))
    out.append(Charts(samples, entries, r.started, band) if samples else Note("No metrics logged."))
    return out


def _series(samples: list[Event], path: tuple[str, ...]) -> list[tuple[float, float]]:
    points = []
    for e in samples:
        v: Any = e.data
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, int | float):
            points.append((e.t, float(v)))
    return points


def _calibration_band(decisions: list[Event]) -> tuple[float, float]:
    """The configured band, as the calibration guardrail stated its threshold (0.85–1.15)."""
    for e in reversed(decisions):
        for g in e.data.get("guardrails", []):
            found = re.findall(r"\d+(?:\.\d+)?", g.get("threshold", ""))
            if g.get("name") == "calibration" and len(found) == 2:
                return float(found[0]), float(found[1])
    return 0.85, 1.15


Line = tuple[str, str, tuple[str, ...]]  # legend, colour, path into a metrics record
CTR: tuple[Line, ...] = (
    ("champion", "#1f77b4", ("champion", "ctr")),
    ("challenger", "#d62728", ("challenger", "ctr")),
)
PBETTER: tuple[Line, ...] = (("P(challenger better)", "#2ca02c", ("p_better",)),)
CAL: tuple[Line, ...] = (
    ("challenger", "#d62728", ("challenger", "calibration")),
    ("champion", "#1f77b4", ("champion", "calibration")),
)


def _unit(span: float) -> tuple[float, str]:
    for seconds, name in ((86400.0, "days"), (3600.0, "h"), (60.0, "min")):
        if span >= 2 * seconds:
            return seconds, name
    return 1.0, "s"


def svg(
    title: str,
    lines: list[tuple[str, str, list[tuple[float, float]]]],
    c: Charts,
    *,
    percent: bool = False,
    band: tuple[float, float] | None = None,
    fixed: tuple[float, float] | None = None,
) -> str:
    """A line chart over rollout time: hand-written SVG, phase entries as dashed markers."""
    w, h, left, right, top, bottom = 680, 210, 64, 16, 30, 30
    pts = [p for _, _, ps in lines for p in ps]
    if not pts:
        return f"<p>{html.escape(title)}: no data.</p>"
    x0, x1 = c.start, max([p[0] for p in pts] + [t for t, _ in c.phases])
    ys = [p[1] for p in pts] + (list(band) if band else [])
    y0, y1 = fixed or (min(ys), max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-6)
    unit, unit_name = _unit(x1 - x0)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)

    t = html.escape(title)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{t}"><title>{t}</title><text x="{left}" y="16" class="t">{t}</text>'
    ]
    if band:
        out.append(
            f'<rect x="{left}" y="{sy(band[1]):.1f}" width="{w - left - right}" '
            f'height="{sy(band[0]) - sy(band[1]):.1f}" fill="#2ca02c" opacity="0.13"/>'
        )
    for i in range(5):
        y, x = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        label = f"{y * 100:.2f}%" if percent else f"{y:.3g}"
        out.append(
            f'<line x1="{left}" x2="{w - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">'
            f'{label}</text><text x="{sx(x):.1f}" y="{h - 10}" text-anchor="middle">'
            f"{(x - x0) / unit:.3g} {unit_name}</text>"
        )
    for entered, phase in c.phases:
        x = sx(entered)
        at, anchor = (x + 3, "start") if x < w - right - 30 else (x - 3, "end")
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#888" '
            f'stroke-dasharray="4 3"/><text x="{at:.1f}" y="{top + 10}" fill="#666" '
            f'text-anchor="{anchor}">P{phase}</text>'
        )
    for n, (name, color, ps) in enumerate(lines):
        step = max(1, len(ps) // MAX_SVG_POINTS)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps[::step] + ps[-1:])
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>'
            f'<text x="{w - right - 150 * (len(lines) - 1 - n)}" y="16" fill="{color}" '
            f'text-anchor="end">━ {html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _lines(c: Charts, spec: tuple[Line, ...]) -> list[tuple[str, str, list[tuple[float, float]]]]:
    return [(name, color, _series(c.samples, path)) for name, color, path in spec]


def _charts_html(c: Charts) -> str:
    return "\n".join(
        [
            svg("CTR per arm", _lines(c, CTR), c, percent=True),
            svg("P(challenger better)", _lines(c, PBETTER), c, fixed=(0.0, 1.0)),
            svg("Calibration: predicted / actual clicks", _lines(c, CAL), c, band=c.band),
        ]
    )


def _pngs(c: Charts, out: Path) -> list[str]:
    """PNG plots next to `out`, or [] without matplotlib (a test dependency only)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    start = c.start
    unit, unit_name = _unit(c.samples[-1].t - start)
    names = []
    charts = (
        ("ctr", ((CTR, "CTR"), (PBETTER, "P(challenger better)"))),
        ("calibration", ((CAL, "predicted / actual"),)),
    )
    for suffix, specs in charts:
        fig = Figure(figsize=(8, 2.6 * len(specs)), layout="constrained")
        axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (spec, label) in zip(axes, specs, strict=True):
            for name, color, ps in _lines(c, spec):
                if ps:
                    xs, ys = [(x - start) / unit for x, _ in ps], [y for _, y in ps]
                    ax.plot(xs, ys, color, label=name)
            for entered, _ in c.phases:
                ax.axvline((entered - start) / unit, color="#888", linestyle="--", linewidth=0.8)
            ax.set_ylabel(label)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(loc="best", fontsize="small")
            ax.grid(alpha=0.3)
        if suffix == "calibration":
            axes[0].axhspan(*c.band, color="#2ca02c", alpha=0.13)
        axes[-1].set_xlabel(f"{unit_name} since start (dashed: phase entries)")
        path = out.with_name(f"{out.stem}-{suffix}.png")
        fig.savefig(path, dpi=100)
        names.append(path.name)
    return names


def _text_samples(samples: list[Event], start: float) -> Table:
    step = max(1, len(samples) // TEXT_ROWS)
    picked = samples[::step][: TEXT_ROWS - 1]
    picked += [] if picked[-1] is samples[-1] else samples[-1:]
    rows = [
        [
            f"+{duration(e.t - start)}",
            str(e.phase),
            _pct(e.data["champion"]["ctr"], 3),
            _pct(e.data["challenger"]["ctr"], 3),
            _num(e.data["p_better"]),
            _num(e.data["challenger"]["calibration"]),
        ]
        for e in picked
    ]
    head = ["time", "phase", "champion CTR", "challenger CTR", "P(better)", "calibration"]
    return Table(head, rows, [""] * len(rows))


def _md_table(t: Table) -> list[str]:
    def cell(s: str) -> str:  # a failure stands out in plain text too
        s = s.replace("|", "\\|")
        return f"**{s}**" if s in ("fail", "failed") else s

    lines = ["| " + " | ".join(t.head) + " |", "|" + "---|" * len(t.head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return [*lines, ""]


def _markdown(bs: list[Block], out: Path | None) -> str:
    lines: list[str] = []
    for b in bs:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Facts):
            lines += [f"- **{k}:** {v}" for k, v in b.pairs] + [""]
        elif isinstance(b, Note):
            lines += [f"> **{b.text}**" if b.breach else b.text, ""]
        elif isinstance(b, Table):
            lines += _md_table(b)
        else:
            pngs = _pngs(b, out) if out is not None else []
            if pngs:
                lines += [*(f"![{name}]({name})" for name in pngs), ""]
            lines += [f"Sampled metric records ({len(b.samples)} in all):", ""]
            lines += _md_table(_text_samples(b.samples, b.start))
    return "\n".join(lines)


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
tr.fail td,tr.failed td{background:#fde2e2;font-weight:600}tr.waiting td{color:#777}
.breach{border-left:5px solid #c00;background:#fdecec;padding:.6em 1em;font-weight:600}
svg{width:100%;height:auto;font:11px sans-serif;margin:.5em 0}svg .t{font-weight:600;font-size:13px}
dt{font-weight:600;float:left;width:9em}dd{margin:0 0 .2em 9em}
"""


def _html(bs: list[Block]) -> str:
    e = html.escape
    title = next((b.text for b in bs if isinstance(b, Heading)), "Rollout")
    body: list[str] = []
    for b in bs:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Facts):
            body.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in b.pairs))
            body.append("</dl>")
        elif isinstance(b, Note):
            body.append(f'<p class="breach">{e(b.text)}</p>' if b.breach else f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.head) + "</tr>")
            for row, mark in zip(b.rows, b.marks, strict=True):
                cells = "".join(f"<td>{e(c)}</td>" for c in row)
                body.append(f'<tr class="{e(mark)}">{cells}</tr>')
            body.append("</table>")
        else:
            body.append(_charts_html(b))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render(journal: Journal, rollout_id: str, fmt: Format = "md", out: Path | None = None) -> str:
    """The post-mortem of `rollout_id` as Markdown or self-contained HTML. With `out` (the
    file the caller will write), Markdown plots are written next to it as PNG when
    matplotlib is installed. Raises KeyError for an unknown rollout."""
    try:
        r = journal.get(rollout_id)
    except KeyError:
        raise KeyError(
            f"no rollout {rollout_id!r} in {journal.path} (`rampart report --list` shows them)"
        ) from None
    bs = _blocks(r, journal.events(rollout_id))
    if fmt == "html":
        return _html(bs)
    if fmt == "md":
        return _markdown(bs, out)
    raise ValueError(f"unknown report format {fmt!r}; use md or html")


def listing(journal: Journal) -> str:
    """One line per rollout, oldest first: id, outcome, phase, start, duration, reason."""
    lines = []
    for r in journal.all():
        state = r.outcome or r.state.value
        took = duration(r.ended - r.started) if r.ended is not None else "running"
        lines.append(
            f"{r.id:<24} {state:<12} phase {r.phase}  {when(r.started)}  {took:>12}  {r.reason}"
        )
    return "\n".join(lines) if lines else "no rollouts"
