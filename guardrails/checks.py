"""Every guardrail, as a function of the rollout's evidence returning a `Result`.

Each result has a state: `fail` (act now: roll back, or stop for segment degradation
and the maximum duration), `pass`, or `waiting` (too little evidence to say either —
never passed or failed on noise). `evaluate` lists the results that apply in a phase:
each phase's breach checks keep applying in later phases; the advance criteria (P(better),
uplift, duration, sample) are the current phase's own.

    evidence.py     Evidence (gathered each tick), Result
    safety.py       phase 1: predictions in range, errors, latency, output spread and shift,
                    sample ratio, clicks
    calibration.py  phase 2: predicted / actual clicks, overall and per bucket
    paired.py       phase 1 on: the arms on the same rows (when [paired] scoring is on)
    comparison.py   phase 3 on: early rollback (ab_worse), segment degradation (phase 4 on)
    advance.py      what advancing waits for
    shadow.py       phase 0 (shadow): the phase-1 checks that need no clicks
"""

from __future__ import annotations

from collections.abc import Callable

from guardrails.advance import advance_checks
from guardrails.calibration import calibration, calibration_buckets
from guardrails.comparison import ab_worse, segment_degradation
from guardrails.evidence import Evidence, Result, SegmentRow, gather
from guardrails.measures import SegmentCodes, measure
from guardrails.paired import paired_correlation, paired_mean_ratio, paired_spread
from guardrails.policy import Policy
from guardrails.safety import (
    clicks_per_10k,
    error_rate,
    latency_p99,
    prediction_shift,
    prediction_spread,
    predictions_in_range,
    sample_ratio,
    segment_error_rate,
)
from guardrails.shadow import shadow_checks
from router.snapshot import SlotTotals

Check = Callable[[Policy, Evidence], Result]

# (the phase that introduces it, the check), in the order `decide` reads them: the first
# failure names the rollback.
BREACH_CHECKS: tuple[tuple[int, Check], ...] = (
    (1, predictions_in_range),
    (1, error_rate),
    (1, segment_error_rate),
    (1, latency_p99),
    (1, prediction_spread),
    (1, prediction_shift),
    (1, paired_spread),
    (1, paired_correlation),
    (1, paired_mean_ratio),
    (1, sample_ratio),
    (1, clicks_per_10k),
    (2, calibration),
    (2, calibration_buckets),
    (3, ab_worse),
    (4, segment_degradation),
)


PAIRED_CHECKS = (paired_spread, paired_correlation, paired_mean_ratio)


def evaluate(p: Policy, e: Evidence, phase: int) -> list[Result]:
    """Every result that applies in `phase`, breach checks first (the paired ones only with
    paired scoring on: without it they would wait forever)."""
    if phase == 0:
        return shadow_checks(p, e)
    results = [
        check(p, e)
        for since, check in BREACH_CHECKS
        if since <= phase and (p.paired or check not in PAIRED_CHECKS)
    ]
    return results + advance_checks(p, e, phase)


__all__ = [
    "BREACH_CHECKS",
    "Check",
    "Evidence",
    "Result",
    "SegmentRow",
    "ab_worse",
    "advance_checks",
    "calibration",
    "calibration_buckets",
    "clicks_per_10k",
    "error_rate",
    "evaluate",
    "gather",
    "latency_p99",
    "paired_correlation",
    "paired_mean_ratio",
    "paired_spread",
    "prediction_shift",
    "prediction_spread",
    "predictions_in_range",
    "sample_ratio",
    "segment_degradation",
    "segment_error_rate",
]


def warm_up(policy: Policy, codes: SegmentCodes, zero: SlotTotals) -> None:
    """Run every check once on empty evidence: loading the numba kernels takes a second or
    more on a busy machine, and that must not happen in the tick that sees a breach (nor,
    in fleet mode, in the tick a host takes over as leader)."""
    nothing = measure(zero, codes)
    e = gather(policy, nothing, nothing, nothing, (0, 0), 300, 0.0, 0.0)
    evaluate(policy, e, len(policy.phases))
