"""The post-mortem, rendered from journals a real evaluator wrote (tests/guardrails/
test_evaluator.py's rig: fake clock, one tick per hour of rollout, metrics logged every
tick), read back after the evaluator is closed."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_evaluator import _rig

from guardrails import report
from guardrails.alerts import Alerter
from guardrails.rollouts import Event, Journal

DEAD_HOOK = "http://127.0.0.1:9/down"  # nothing listens on the discard port


def _drive(tmp: Path, manual: bool = False, **run: Any) -> tuple[Path, str]:
    """Run one rollout to its end; return the state directory and the rollout id."""
    alerter = Alerter(None, DEAD_HOOK, max_attempts=1, backoff_s=0.0, timeout_s=1.0)
    rig = _rig(tmp, alerter, rollout={"journal_every_s": 0})
    try:
        rig.start()
        if manual:
            rig.run(3)
            rig.evaluator.apply("pause", {})
            rig.run(2)
            rig.evaluator.apply("resume", {})
            rig.run(2)
            rig.evaluator.apply("rollback", {})
        else:
            rig.run(400, **run)
        r = rig.evaluator.rollout
        assert r is not None and not r.state.active
        deadline = time.monotonic() + 10
        while not rig.evaluator.alerter.history and time.monotonic() < deadline:
            time.sleep(0.02)
        rig.evaluator.tick()  # drains the delivery outcome into the event log
        return rig.config.state_path, r.id
    finally:
        rig.evaluator.alerter.close(0.1)
        rig.evaluator.close()


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    # A worse challenger passes phases 1 and 2, then the A/B test pulls it in phase 3.
    return _drive(tmp_path_factory.mktemp("rb"), ctr=(0.02, 0.015), prediction=(0.02, 0.015))


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _drive(tmp_path_factory.mktemp("pr"), ctr=(0.02, 0.026), prediction=(0.02, 0.026))


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _drive(tmp_path_factory.mktemp("mn"), manual=True)


def _end(state: Path, rollout_id: str, kind: str) -> Event:
    journal = Journal(state)
    try:
        return journal.events(rollout_id, kinds=(kind,))[0]
    finally:
        journal.close()


def _render(state: Path, rollout_id: str, fmt: report.Format, out: Path | None = None) -> str:
    journal = Journal(state)
    try:
        return report.render(journal, rollout_id, fmt, out)
    finally:
        journal.close()


class _Strict(HTMLParser):
    """Collects tags, text and attributes; fails on an unbalanced end tag."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Strict:
    parser = _Strict()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


def test_render_markdown_rollback_shows_phases_decisions_and_the_breach(
    rolled_back: tuple[Path, str],
) -> None:
    state, rollout_id = rolled_back
    event = _end(state, rollout_id, "rolled_back")
    breach = event.data
    md = _render(state, rollout_id, "md")
    assert md.startswith(f"# Rollout {rollout_id}: tiny:2 vs tiny:1")
    assert "- **Outcome:** rolled_back" in md
    phases = re.findall(r"^\| (\d) \| (\S+) \| (\S+) \| .+ \| (\S+) \|$", md, re.M)
    assert [(p[0], p[3]) for p in phases] == [("1", "passed"), ("2", "passed"), ("3", "**failed**")]
    assert all(p[1].endswith("Z") and p[2].endswith("Z") for p in phases)  # UTC ISO
    assert breach["guardrail"] == "ab_worse"
    assert (
        f"> **Breach in phase 3 at {report.when(event.t)}: guardrail ab_worse = "
        f"{breach['value']:.4g}, threshold {breach['threshold']}**"
    ) in md
    assert f"| ab_worse | {breach['value']:.4g} | {breach['threshold']} | **fail** |" in md
    decisions = re.findall(r"^### \S+: (.+)$", md, re.M)
    assert decisions == [
        "advanced to phase 2 (10%)",
        "advanced to phase 3 (20%)",
        "rolled back in phase 3",
    ]
    assert md.count("Metrics: champion CTR") == 3  # the metrics that drove each decision
    assert "| rollback | webhook | **failed** | 1 | ConnectError" in md  # alert delivery


def test_render_markdown_without_out_samples_the_metrics_as_text(
    rolled_back: tuple[Path, str],
) -> None:
    md = _render(*rolled_back, "md")
    table = md.split("Sampled metric records")[1]
    rows = re.findall(r"^\| \+.+$", table, re.M)
    assert 2 <= len(rows) <= report.TEXT_ROWS
    assert "| time | phase | champion CTR | challenger CTR | P(better) | calibration |" in table
    assert "![" not in md


def test_render_markdown_with_out_writes_the_html_charts_as_svg_files(
    rolled_back: tuple[Path, str], tmp_path: Path
) -> None:
    out = tmp_path / "postmortem.md"
    md = _render(*rolled_back, "md", out)
    page = _render(*rolled_back, "html")
    svg = "{http://www.w3.org/2000/svg}"
    for slug, title, lines in (
        ("ctr", "CTR per arm", 2),
        ("p-better", "P(challenger better)", 1),
        ("calibration", "Calibration: predicted / actual clicks", 2),
    ):
        name = f"postmortem-{slug}.svg"
        assert f"![{title}]({name})" in md
        text = (tmp_path / name).read_text(encoding="utf-8")
        root = ET.fromstring(text)  # a standalone, well-formed SVG document
        assert root.tag == f"{svg}svg" and root.get("width") and root.get("height")
        assert len(root.findall(f"{svg}polyline")) == lines
        assert text in page  # one renderer: the HTML inlines the very same chart


def test_render_html_rollback_is_self_contained_with_svg_plots(
    rolled_back: tuple[Path, str],
) -> None:
    state, rollout_id = rolled_back
    breach = _end(state, rollout_id, "rolled_back").data
    page = _render(state, rollout_id, "html")
    parsed = _parse(page)
    assert parsed.tags.count("svg") == 3 and parsed.tags.count("polyline") == 5
    assert "script" not in parsed.tags and "img" not in parsed.tags and "link" not in parsed.tags
    urls = [v for k, v in parsed.attrs if k in ("src", "href") and v]
    assert urls == []  # nothing fetched: CSS inline, plots inline
    text = "".join(parsed.text)
    assert f"guardrail ab_worse = {breach['value']:.4g}, threshold {breach['threshold']}" in text
    assert "advanced to phase 2 (10%)" in text and "rolled back in phase 3" in text
    # Escaped in the source, readable once parsed.
    assert "&lt; 0.10%" in page and "< 0.10%" in text
    assert '<p class="breach">' in page and '<tr class="fail"><td>ab_worse</td>' in page


@pytest.mark.parametrize("fmt", [pytest.param("md", id="md"), pytest.param("html", id="html")])
def test_render_promoted_rollout_lists_five_phases_and_no_breach(
    promoted: tuple[Path, str], fmt: report.Format
) -> None:
    state, rollout_id = promoted
    text = _render(state, rollout_id, fmt)
    if fmt == "html":
        text = " ".join(_parse(text).text)
    assert "Breach" not in text
    assert "promoted in phase 5" in text
    for n in range(2, 6):
        assert f"advanced to phase {n}" in text
    assert len(re.findall(r"Z\W+(?:\d+[dhm]\d\d[hms]|\d+s)\W+passed", text)) == 5  # phase rows


def test_render_manual_decisions_are_marked_manual(manual: tuple[Path, str]) -> None:
    md = _render(*manual, "md")
    decisions = re.findall(r"^### \S+: (.+)$", md, re.M)
    assert decisions == [
        "paused in phase 1 (manual)",
        "resumed in phase 1 (manual)",
        "rolled back in phase 1 (manual)",
    ]
    assert "> **Manual decision: rolled back in phase 1 (manual)**" in md


def test_render_unknown_rollout_raises_key_error(rolled_back: tuple[Path, str]) -> None:
    with pytest.raises(KeyError, match=r"no rollout 'r-nope'.*--list"):
        _render(rolled_back[0], "r-nope", "md")


def test_listing_shows_each_rollout_with_its_outcome(rolled_back: tuple[Path, str]) -> None:
    journal = Journal(rolled_back[0])
    try:
        lines = report.listing(journal).splitlines()
    finally:
        journal.close()
    assert len(lines) == 1
    assert lines[0].startswith(rolled_back[1]) and "rolled_back" in lines[0]
    assert "phase 3" in lines[0] and "ab_worse" in lines[0]
