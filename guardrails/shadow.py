"""Phase 0's guardrails: the shadow phase, judged on the challenger's runs on copies of
live requests (router.shadow) before any of its answers reaches a client.

The phase-1 checks that need no clicks apply as they are: predictions in range, error
rate, errors per publisher segment, latency p99 (the run's own time, and runs past the
challenger timeout), and the spread and shift of the predictions against the champion's
on the same traffic. What needs the split (the sample ratio) or clicks (clicks per 10k)
waits for phase 1. Advancing to phase 1 needs all of them to pass, the phase's minimum
duration, and `[phases.0] min_requests` runs.
"""

from __future__ import annotations

from guardrails.evidence import Evidence, Result
from guardrails.policy import Policy, State
from guardrails.safety import (
    error_rate,
    latency_p99,
    prediction_shift,
    prediction_spread,
    predictions_in_range,
    segment_error_rate,
)

SHADOW_CHECKS = (
    predictions_in_range,
    error_rate,
    segment_error_rate,
    latency_p99,
    prediction_spread,
    prediction_shift,
)


def shadow_checks(p: Policy, e: Evidence) -> list[Result]:
    """Every result of phase 0, breach checks first."""
    results = [check(p, e) for check in SHADOW_CHECKS]
    min_s = p.min_s(0)
    spec = p.phase(0)
    results.append(
        Result(
            "min_duration",
            e.time_in_phase_s,
            f">= {min_s:g} s",
            State.PASS if e.time_in_phase_s >= min_s else State.WAITING,
            0,
            f"{spec.min_hours:g} h x time_scale {p.time_scale:g}",
        )
    )
    need = p.shadow_min_requests()
    have = e.challenger.requests
    results.append(
        Result(
            "min_requests",
            float(have),
            f">= {need}",
            State.PASS if have >= need else State.WAITING,
            0,
            "challenger runs on copies of live requests",
        )
    )
    return results
