"""What the evaluator shows: the status document workers serve (built by a pure function
of the rollout's state; its schema is `router.status`), and compact metric records for
the event log (the post-mortem's plots are drawn from those)."""

from __future__ import annotations

import math
import os
from typing import Any

from guardrails.checks import Evidence, Result
from guardrails.measures import ArmMetrics, wilson_kernel
from guardrails.policy import Policy, State
from guardrails.rollouts import Event, Rollout, RolloutState
from router.shadow import phase_name
from router.status import EvaluatorStatus, PhaseInfo, RolloutInfo

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
    # Python lists, not numpy scalars: indexing an array element by element is ~10x slower.
    arms = [
        (
            name,
            arm.bucket_impressions.tolist(),
            arm.bucket_clicks.tolist(),
            arm.bucket_predicted.tolist(),
        )
        for name, arm in (("champion", e.champion), ("challenger", e.challenger))
    ]
    seen = [a or b for a, b in zip(arms[0][1], arms[1][1], strict=True)]
    out = []
    for i, any_seen in enumerate(seen):
        if not any_seen:
            continue
        entry: dict[str, Any] = {"lo": i * width, "hi": min((i + 1) * width, 1.0)}
        for name, impressions, clicks_of, predicted_of in arms:
            clicks = float(clicks_of[i])
            predicted = float(predicted_of[i])
            entry[name] = {
                "impressions": int(impressions[i]),
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


def _next_step(policy: Policy, r: Rollout | None, results: list[Result]) -> str:
    if r is None or not r.state.active:
        return "no rollout: register a model, then `rampart rollout start VERSION`"
    if r.state == RolloutState.LOADING:
        return "waiting for every worker to load the challenger"
    if r.paused:
        return "paused: `rampart rollout resume` to continue (breaches still roll back)"
    failing = [x for x in results if x.state == State.FAIL]
    if failing:
        return f"rolling back: {failing[0].name}"
    waiting = [x for x in results if x.state != State.PASS]
    last = r.phase == len(policy.phases)
    goal = (
        "promote"
        if last
        else f"advance to phase {r.phase + 1} ({policy.phase(r.phase + 1).split_bp / 100:g}%)"
    )
    if not waiting:
        return f"{goal}: every guardrail passes"
    needs = "; ".join(f"{x.name} {x.threshold} (now {x.value_text})" for x in waiting)
    return f"{goal} when: {needs}"


def _rollout_info(p: Policy, r: Rollout, now: float) -> RolloutInfo:
    return {
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


def _phases(p: Policy, r: Rollout | None) -> list[PhaseInfo]:
    entered = {x["phase"]: x for x in (r.phases if r else [])}
    out: list[PhaseInfo] = []
    shadow = [p.phase(0)] if p.shadow is not None or 0 in entered else []
    for spec in (*shadow, *p.phases):
        seen = entered.get(spec.number, {})
        out.append(
            {
                "phase": spec.number,
                "name": phase_name(spec.number),
                "split_bp": spec.split_bp,
                "min_s": p.min_s(spec.number),
                "max_s": p.max_s(spec.number),
                "min_impressions": p.min_impressions(spec.number),
                "entered": seen.get("entered"),
                "exited": seen.get("exited"),
                "result": seen.get("result", "pending"),
            }
        )
    return out


def status(
    *,
    policy: Policy,
    rollout: Rollout | None,
    results: list[Result],
    evidence: Evidence | None,
    series: Series,
    events: list[dict[str, Any]],
    counters: dict[str, int],
    split_bp: int,
    bucket_width: float,
    tick_ms: float,
    now: float,
) -> EvaluatorStatus:
    """The status document, from the rollout's state alone (no I/O). Its floats may be NaN
    or infinite: `router.status.encode` writes those as null."""
    r = rollout
    p = policy
    active = r is not None and r.state.active
    results = results if active else []
    e = evidence if active else None
    info = _rollout_info(p, r, now) if r is not None else None
    out: EvaluatorStatus = {
        "phase": r.phase if active and r is not None else 0,
        "phase_name": phase_name(r.phase if r is not None else 0, active),
        "state": r.state.value if active and r is not None else "idle",
        "split_bp": split_bp,
        "rollout": info if active else None,
        "last_rollout": info,
        "phases": _phases(p, r),
        "guardrails": [x.to_json() for x in results],  # type: ignore[misc]
        "next": _next_step(p, r, results),
        "comparison": None,
        "series": [],
        "calibration": {
            "bucket_width": bucket_width,
            "band": [p.guards.bucket_low, p.guards.bucket_high],
            "buckets": [],
        },
        "latency": None,
        "segments": [],
        "events": events if r is not None else [],
        "counters": counters,
        "evaluator": {"pid": os.getpid(), "updated": now, "tick_ms": tick_ms},
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
        out["evidence"] = {
            name: {
                "requests": arm.requests,
                "errors": arm.errors,
                "impressions": arm.impressions,
                "clicks": arm.clicks,
            }
            for name, arm in (("champion", e.champion), ("challenger", e.challenger))
        }
        out["calibration"]["buckets"] = _buckets(e, bucket_width)
        out["latency"] = {"champion": _latency(e.champion), "challenger": _latency(e.challenger)}
        out["segments"] = [vars(s) for s in e.segments]
    out["series"] = series.points if r is not None else []
    return out  # NaN and infinity: the writer's JSON makes them null (router.status.encode)


def event_brief(x: Event) -> dict[str, Any]:
    """One event-log record as the dashboard lists it."""
    data = x.data
    brief = {
        k: data.get(k)
        for k in ("guardrail", "value", "threshold", "split_bp", "target", "outcome", "attempts")
    }
    return clean(
        {"t": x.t, "kind": x.kind, "phase": x.phase, "detail": data.get("reason", ""), **brief}
    )


def clean(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
