"""The post-mortem of one rollout, written from the journal alone (it works after the
server is gone): header, phases, every decision with the guardrails and metrics that
drove it, the breach, alert deliveries, and CTR and calibration over the rollout.

The content is built once as a list of blocks; Markdown and HTML are two small
emitters over it. Charts come from `guardrails.charts` for both: HTML inlines their SVG
(self-contained: inline CSS, no script), Markdown links SVG files written next to it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from guardrails import charts
from guardrails.charts import Timeline
from guardrails.rollouts import Event, Journal, Rollout
from guardrails.units import duration, number, percent
from router.shadow import phase_name

Format = Literal["md", "html"]
DECISIONS = ("advanced", "paused", "resumed", "rolled_back", "stopped", "promoted")
ENDINGS = ("rolled_back", "stopped", "promoted")
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


Block = Heading | Facts | Table | Note | Timeline


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _key_metrics(m: dict[str, Any]) -> str:
    arms = [
        f"{arm} CTR {percent(a.get('ctr'), 3)} ({a.get('clicks', 0)} clicks / "
        f"{a.get('impressions', 0)} impressions, {a.get('errors', 0)} errors)"
        for arm, a in ((arm, m.get(arm) or {}) for arm in ("champion", "challenger"))
    ]
    ch = m.get("challenger") or {}
    return "; ".join(
        [
            *arms,
            f"P(better) {number(m.get('p_better'))}, P(worse) {number(m.get('p_worse'))}",
            f"uplift {percent(m.get('uplift'), 1)} "
            f"[{percent(m.get('uplift_low'), 1)}, {percent(m.get('uplift_high'), 1)}]",
            f"challenger calibration {number(ch.get('calibration'))}, "
            f"p99 {number(ch.get('p99_ms'))} ms",
        ]
    )


def _decision_title(e: Event) -> str:
    if e.kind == "advanced":
        return f"advanced to phase {e.phase} ({e.data.get('split_bp', 0) / 100:g}%)"
    verb = {"rolled_back": "rolled back"}.get(e.kind, e.kind)
    where = phase_name(e.phase)
    return f"{verb} in phase {where}" + (" (manual)" if e.data.get("manual") else "")


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
                ("Last phase", phase_name(r.phase)),
            ]
        ),
    ]
    if end is not None and end.data.get("manual"):
        out.append(Note(f"Manual decision: {_decision_title(end)}", breach=True))
    elif end is not None and end.kind != "promoted" and end.data.get("guardrail"):
        d = end.data
        out.append(
            Note(
                f"Breach in phase {phase_name(end.phase)} at {when(end.t)}: "
                f"guardrail {d['guardrail']} = {number(d.get('value'))}, "
                f"threshold {d.get('threshold') or '-'}",
                breach=True,
            )
        )
    phases = [
        [
            phase_name(p["phase"]),
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
            rows = [[g["name"], number(g["value"]), g["threshold"], g["state"]] for g in results]
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
    out.append(
        Timeline(samples, entries, r.started, band) if samples else Note("No metrics logged.")
    )
    return out


def _calibration_band(decisions: list[Event]) -> tuple[float, float]:
    """The configured band, as the calibration guardrail stated its threshold (0.85–1.15)."""
    for e in reversed(decisions):
        for g in e.data.get("guardrails", []):
            found = re.findall(r"\d+(?:\.\d+)?", g.get("threshold", ""))
            if g.get("name") == "calibration" and len(found) == 2:
                return float(found[0]), float(found[1])
    return 0.85, 1.15


def _chart_files(t: Timeline, out: Path) -> list[str]:
    """The charts as SVG files next to `out`; Markdown lines that show them."""
    lines = []
    for chart, svg in charts.render(t):
        if svg is None:
            lines.append(f"{chart.title}: no data.")
            continue
        path = out.with_name(f"{out.stem}-{chart.slug}.svg")
        path.write_text(svg, encoding="utf-8")
        lines.append(f"![{chart.title}]({path.name})")
    return [*lines, ""]


def _text_samples(samples: list[Event], start: float) -> Table:
    step = max(1, len(samples) // TEXT_ROWS)
    picked = samples[::step][: TEXT_ROWS - 1]
    picked += [] if picked[-1] is samples[-1] else samples[-1:]
    rows = [
        [
            f"+{duration(e.t - start)}",
            phase_name(e.phase),
            percent(e.data["champion"]["ctr"], 3),
            percent(e.data["challenger"]["ctr"], 3),
            number(e.data["p_better"]),
            number(e.data["challenger"]["calibration"]),
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
            if out is not None:
                lines += _chart_files(b, out)
            lines += [f"Sampled metric records ({len(b.samples)} in all):", ""]
            lines += _md_table(_text_samples(b.samples, b.start))
    return "\n".join(lines)


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
tr.fail td,tr.failed td{background:#fde2e2;font-weight:600}tr.waiting td{color:#777}
.breach{border-left:5px solid #c00;background:#fdecec;padding:.6em 1em;font-weight:600}
svg{width:100%;height:auto;margin:.5em 0}
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
            for chart, svg in charts.render(b):
                body.append(svg or f"<p>{e(chart.title)}: no data.</p>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render(journal: Journal, rollout_id: str, fmt: Format = "md", out: Path | None = None) -> str:
    """The post-mortem of `rollout_id` as Markdown or self-contained HTML. With `out` (the
    file the caller will write), Markdown's charts are written next to it as SVG files
    (`<stem>-ctr.svg`, `-p-better.svg`, `-calibration.svg`). Raises KeyError for an unknown
    rollout."""
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
        phase = phase_name(r.phase)
        lines.append(
            f"{r.id:<24} {state:<12} phase {phase}  {when(r.started)}  {took:>12}  {r.reason}"
        )
    return "\n".join(lines) if lines else "no rollouts"
