"""`rampart demo`: the whole story in under three minutes, on the shipped models.

Starts `rampart serve` on a temporary state directory with the demo champion, drives it with
the ad-server simulator (impressions and clicks drawn from a known ground truth), and rolls
out two challengers one after the other, with a live view of the rollout in the terminal:

1. a better model, walked through all five phases and promoted;
2. a broken one (constant predictions), rolled back automatically in phase 1 — with the
   Slack alert it sent, received by a local webhook.

The policy is the production one on a scaled clock (one hour of the policy is half a second;
see harness/scenarios.py). Everything it started is stopped when it ends or is interrupted.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

from harness.scenarios import SCENARIOS
from harness.session import Session
from rampart.status_table import status_text

STAGES = (
    ("promote", "a better challenger: five phases, then promotion"),
    ("broken-constant", "a broken challenger (constant predictions): automatic rollback"),
)


class LiveView:
    """Redraws the rollout at most twice a second on a terminal; elsewhere prints a line
    per phase change, so logs stay readable."""

    def __init__(self, stream: Any = sys.stdout) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.stage = ""
        self.last_draw = 0.0
        self.last_line = ""

    def __call__(self, status: dict[str, Any]) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw < 0.5:
                return
            self.last_draw = now
            text = status_text(status, colour=True)
            self.stream.write(f"\033[H\033[2J{self.stage}\n\n{text}\n")
            self.stream.flush()
            return
        line = (
            f"  phase {status.get('phase')}  split {status.get('split_bp', 0) / 100:.1f}%  "
            f"{status.get('state')}"
        )
        if line != self.last_line:
            self.last_line = line
            print(line, file=self.stream, flush=True)


def _summary(verdict: dict[str, Any]) -> str:
    phases = ", ".join(f"{p['phase']} at {p['entered_s']:.0f}s" for p in verdict["phases"])
    lines = [f"  outcome: {verdict['outcome']} in phase {verdict['phase']}"]
    if verdict.get("guardrail"):
        lines.append(
            f"  guardrail: {verdict['guardrail']} = {verdict.get('value')} "
            f"(threshold {verdict.get('threshold')})"
        )
    if verdict.get("detection_seconds") is not None:
        lines.append(
            f"  detection: {verdict['detection_seconds']:.1f} s from the challenger's first "
            "answer to 100% champion, as the ad server saw it"
        )
    lines.append(f"  phases entered: {phases}; {verdict['seconds']:.0f} s")
    return "\n".join(lines)


def _fleet_summary(session: Session) -> str:
    """Every host's own view: the same decision everywhere."""
    lines = []
    for host in session.hosts:
        s = host.status()
        fleet = s.get("fleet") or {}
        lines.append(
            f"  {fleet.get('host')}: champion {(s['models']['champion'] or {}).get('label')}, "
            f"challenger share {s['effective_split_bp'] / 100:.1f}%, leader {fleet.get('leader')}"
        )
    return "\n".join(lines)


def run_demo(rate: float = 2000.0, port: int = 0, fleet_hosts: int = 0) -> int:
    """The single-host demo, or with `fleet_hosts` that many `rampart serve --fleet` hosts on
    a private Redis: one rollout, one decision for all of them."""
    view = LiveView()
    verdicts = []
    began = time.monotonic()
    if fleet_hosts:
        if shutil.which("redis-server") is None:
            print("rampart: demo --fleet needs redis-server on PATH (Debian: apt-get install "
                  "redis-server)", file=sys.stderr)  # fmt: skip
            return 2
        print(
            f"Starting {fleet_hosts} rampart serve --fleet hosts on a private redis-server, and "
            "the ad-server simulator sending to all of them (events go to the next host)..."
        )
    else:
        print(
            "Starting rampart serve with the demo champion and the ad-server simulator "
            "(the first run on a machine also compiles the numba kernels)..."
        )
    session = Session(rate=rate, port=port, on_status=view, prefix="demo-", fleet_hosts=fleet_hosts)
    with session:
        for i, (name, title) in enumerate(STAGES, 1):
            view.stage = f"Rampart demo, stage {i}/{len(STAGES)}: {title}"
            print(f"\n{view.stage}", flush=True)
            verdict = session.rollout(SCENARIOS[name])
            verdicts.append(verdict)
            print(f"\n{view.stage}\n{_summary(verdict)}", flush=True)
            if fleet_hosts:
                print(_fleet_summary(session), flush=True)
        alert = verdicts[-1].get("alert")
    if alert:
        print("\nThe Slack alert the rollback sent (received by a local webhook):")
        print(json.dumps(alert, indent=2))
    ok = all(v["passed"] for v in verdicts)
    print(
        f"\nDemo {'finished' if ok else 'FAILED'} in {time.monotonic() - began:.0f} s; "
        "the server and its temporary state are gone."
    )
    return 0 if ok else 1
