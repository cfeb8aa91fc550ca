"""What the evaluator shows: the status document workers serve, and compact metric
records for the event log (the post-mortem's plots are drawn from those)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from guardrails.checks import Evidence, Result
from guardrails.measures import ArmMetrics, wilson_kernel
from guardrails.policy import State
from guardrails.rollouts import Rollout

if TYPE_CHECKING:
    from guardrails.evaluator import Evaluator

MAX_POINTS = 300
_Z95 = 1.959963984540054


class Series:
    """CTR per arm over time for the dashboard: at most MAX_POINTS, thinned by half (and
    the interval doubled) when full, so a 12-day rollout and a 2-minute demo both fit."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.points: list[dict[str, Any]] = []
        self.last = -math.inf

    def add(self, now: float, phase: int, split_bp: int, e: Evidence) -> None:
        if now - self.last < self.interval_s:
            return
        self.last = now
        if len(self.points) >= MAX_POINTS:
            self.points = self.points[::2]
            self.interval_s *= 2
        self.points.append(
            clean(
                {
                    "t": now,
                    "phase": phase,
                    "split_bp": split_bp,
                    "champion": _ctr(e.champion),
                    "challenger": _ctr(e.challenger),
                    "p_better": e.comparison.p_better if e.comparison.method != "none" else None,
                }
            )
        )


def _ctr(arm: ArmMetrics) -> dict[str, Any]:
    low, high = wilson_kernel(float(arm.clicks), float(arm.impressions), _Z95)
    return {
        "impressions": arm.impressions,
        "clicks": arm.clicks,
        "ctr": arm.ctr,
        "ctr_low": low,
        "ctr_high": high,
    }


def _latency(arm: ArmMetrics) -> dict[str, Any]:
    p50, p99, p999, top = arm.latency_us
    return {
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "p999_ms": p999 / 1000,
        "max_ms": top / 1000,
        "count": arm.latency_count,
    }


def _buckets(e: Evidence, width: float) -> list[dict[str, Any]]:
    out = []
    for i in range(e.challenger.bucket_impressions.size):
        if not (e.champion.bucket_impressions[i] or e.challenger.bucket_impressions[i]):
            continue
        entry: dict[str, Any] = {"lo": i * width, "hi": min((i + 1) * width, 1.0)}
        for name, arm in (("champion", e.champion), ("challenger", e.challenger)):
            clicks = float(arm.bucket_clicks[i])
            predicted = float(arm.bucket_predicted[i])
            entry[name] = {
                "impressions": int(arm.bucket_impressions[i]),
                "clicks": int(clicks),
                "predicted": predicted,
                "ratio": predicted / clicks if clicks else None,
            }
        out.append(entry)
    return out


def metrics_record(e: Evidence) -> dict[str, Any]:
    """One look at the evidence, small enough to log every minute of a 12-day rollout."""
    arms = {}
    for name, arm in (("champion", e.champion), ("challenger", e.challenger)):
        arms[name] = {
            "requests": arm.requests,
            "errors": arm.errors,
            "impressions": arm.impressions,
            "clicks": arm.clicks,
            "ctr": arm.ctr,
            "calibration": arm.calibration,
            "p99_ms": arm.latency_us[1] / 1000,
        }
    c, s = e.comparison, e.sequential
    return clean(
        {
            **arms,
            "p_better": c.p_better,
            "p_worse": c.p_worse,
            "uplift": c.uplift,
            "uplift_low": c.uplift_low,
            "uplift_high": c.uplift_high,
            "sequential_upper": s.upper,
            "sequential_lower": s.lower,
            "time_in_phase_s": e.time_in_phase_s,
            "total_s": e.total_s,
        }
    )


def _next_step(ev: Evaluator, r: Rollout | None, results: list[Result]) -> str:
    if r is None or not r.state.active:
        return "no rollout: register a model, then `rampart rollout start VERSION`"
    if r.state == "loading":
        return "waiting for every worker to load the challenger"
    if r.paused:
        return "paused: `rampart rollout resume` to continue (breaches still roll back)"
    failing = [x for x in results if x.state == State.FAIL]
    if failing:
        return f"rolling back: {failing[0].name}"
    waiting = [x for x in results if x.state != State.PASS]
    last = r.phase == len(ev.policy.phases)
    goal = (
        "promote"
        if last
        else f"advance to phase {r.phase + 1} ({ev.policy.phase(r.phase + 1).split_bp / 100:g}%)"
    )
    if not waiting:
        return f"{goal}: every guardrail passes"
    needs = "; ".join(f"{x.name} {x.threshold} (now {x.value_text})" for x in waiting)
    return f"{goal} when: {needs}"


def status(ev: Evaluator, now: float) -> dict[str, Any]:
    r = ev.rollout
    active = r is not None and r.state.active
    p = ev.policy
    results = ev.results if active else []
    e = ev.evidence if active else None
    rollout = None
    if r is not None:
        rollout = {
            "id": r.id,
            "challenger": str(r.challenger),
            "champion": str(r.champion),
            "phase": r.phase,
            "state": r.state.value,
            "started": r.started,
            "phase_started": r.phase_started,
            "time_in_phase_s": now - r.phase_started,
            "phase_min_s": p.min_s(r.phase),
            "phase_max_s": p.max_s(r.phase),
            "paused": r.paused,
            "time_scale": p.time_scale,
            "outcome": r.outcome,
            "reason": r.reason,
            "ended": r.ended,
        }
    entered = {x["phase"]: x for x in (r.phases if r else [])}
    phases = []
    for spec in p.phases:
        seen = entered.get(spec.number, {})
        phases.append(
            {
                "phase": spec.number,
                "split_bp": spec.split_bp,
                "min_s": p.min_s(spec.number),
                "max_s": p.max_s(spec.number),
                "min_impressions": p.min_impressions(spec.number),
                "entered": seen.get("entered"),
                "exited": seen.get("exited"),
                "result": seen.get("result", "pending"),
            }
        )
    events = _events(ev, r)
    out: dict[str, Any] = {
        "phase": r.phase if active and r is not None else 0,
        "state": r.state.value if active and r is not None else "idle",
        "split_bp": ev.shm_split(),
        "rollout": rollout if active else None,
        "last_rollout": rollout,
        "phases": phases,
        "guardrails": [x.to_json() for x in results],
        "next": _next_step(ev, r, results),
        "comparison": None,
        "series": [],
        "calibration": {
            "bucket_width": ev.config.bucket_width,
            "band": [p.guards.bucket_low, p.guards.bucket_high],
            "buckets": [],
        },
        "latency": None,
        "segments": [],
        "events": events,
        "counters": ev.journal.outcomes(),
        "evaluator": {"pid": os.getpid(), "updated": now, "tick_ms": ev.tick_seconds * 1000},
        "early_rollback": p.early_rollback,
    }
    if e is not None:
        c, s = e.comparison, e.sequential
        out["comparison"] = {
            "p_better": c.p_better,
            "p_worse": c.p_worse,
            "uplift": c.uplift,
            "uplift_low": c.uplift_low,
            "uplift_high": c.uplift_high,
            "method": c.method,
            "sequential": {"estimate": s.estimate, "lower": s.lower, "upper": s.upper},
        }
        out["calibration"]["buckets"] = _buckets(e, ev.config.bucket_width)
        out["latency"] = {"champion": _latency(e.champion), "challenger": _latency(e.challenger)}
        out["segments"] = [vars(s) for s in e.segments]
    out = clean(out)
    out["series"] = ev.series.points if r is not None else []  # cleaned as they were added
    return out


def _events(ev: Evaluator, r: Rollout | None) -> list[dict[str, Any]]:
    """The rollout's last 50 decisions, re-read only when the log has grown."""
    if r is None:
        return []
    key = (r.id, ev.journal.last_seq)
    if ev.events_cache[0] != key:
        events = [
            clean({"t": x.t, "kind": x.kind, "phase": x.phase,
                   "detail": x.data.get("reason", ""), **_brief(x.data)})
            for x in ev.journal.events(r.id, limit=50, exclude=("metrics",))
        ]  # fmt: skip
        ev.events_cache = (key, events)
    return ev.events_cache[1]


def _brief(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: data.get(k)
        for k in ("guardrail", "value", "threshold", "split_bp", "target", "outcome", "attempts")
    }


def clean(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
