"""What a finished rollout amounts to, as the ad server saw it: the scenario's verdict.

`detection_seconds` is read from the simulator's timeline: from the challenger's first answer
after the rollout started (or, when the evaluator is frozen, from the freeze) to the start of
the first stretch in which every answer comes from the champion.
"""

from __future__ import annotations

from typing import Any

from harness.scenarios import Scenario
from harness.simulator_stats import SimStats


def verdict(
    s: Scenario,
    final: dict[str, Any],
    phases: list[tuple[int, float]],
    stats: SimStats | None,
    alert: dict[str, Any] | None,
    extra: dict[str, Any],
    seconds: float,
    started_wall: float,
) -> dict[str, Any]:
    last = final.get("last_rollout") or {}
    events = final.get("events") or []
    ends = [e for e in events if e["kind"] in ("rolled_back", "stopped", "promoted")]
    end: dict[str, Any] = ends[-1] if ends else {}
    outcome, phase, guardrail = last.get("state"), last.get("phase"), end.get("guardrail")
    detection = None
    if stats is not None and outcome != "promoted":
        detection = detection_seconds(s, stats, extra, started_wall)
    if s.disturb == "freeze-evaluator":
        outcome, guardrail = "rolled_back", "evaluator_heartbeat"
        phase = extra["freeze"]["phase_before"]
    passed = outcome == s.outcome and s.phase_expected(phase) and (guardrail or "") in s.guardrails
    return {
        "scenario": s.name,
        "outcome": outcome,
        "phase": phase,
        "guardrail": guardrail,
        "detection_seconds": detection,
        "expected": {"outcome": s.outcome, "phase": s.phase, "guardrail": list(s.guardrails)},
        "passed": passed,
        "reason": last.get("reason"),
        "value": end.get("value"),
        "threshold": end.get("threshold"),
        "rollout": last.get("id"),
        "phases": [{"phase": p, "entered_s": t} for p, t in phases],
        "seconds": round(seconds, 1),
        "alert": alert,
        "traffic": None if stats is None else traffic_summary(stats),
        **extra,
    }


def traffic_summary(stats: SimStats) -> dict[str, Any]:
    return {
        "rate": stats.rate,
        "answered": stats.answered,
        "fell_behind": stats.fell_behind,
        "latency_ms": stats.latency_ms,
        "arms": {a: vars(x) for a, x in stats.arms.items()},
    }


def detection_seconds(
    s: Scenario, stats: SimStats, extra: dict[str, Any], started_wall: float
) -> float | None:
    """From the first bad answer to 100% champion on the simulator's timeline (seconds from
    the simulator's start), or None when the timeline shows neither."""
    bad: float | None
    if s.disturb == "freeze-evaluator":
        bad = extra["freeze"]["frozen_at"] - stats.started_at
        seen = _first_clean_second(stats, bad)
    else:
        since = started_wall - stats.started_at
        bad = next(
            (t.t for t in stats.timeline if t.t >= since and (t.challenger or t.fallback)), None
        )
        seen = None if bad is None else stats.first_time_all_champion(bad)
    if bad is None or seen is None:
        return None
    return round(max(seen - bad, 0.0), 2)


def _first_clean_second(stats: SimStats, after: float) -> float | None:
    """Start of the first full second after `after` with no challenger answer (at a 3% split
    and 1000 requests/s, chance gives one in e^30)."""
    run = None
    for t in stats.timeline:
        if t.t < after:
            continue
        if t.challenger or t.fallback:
            run = None
        elif run is None:
            run = t.t
        if run is not None and t.t + stats.timeline_s - run >= 1.0:
            return run
    return None
