"""The A/B comparison's guardrails, from phase 3 on: the challenger's CTR against the
champion's, overall (early rollback) and per segment value (phase 4 on)."""

from __future__ import annotations

from guardrails import stats
from guardrails.evidence import Evidence, Result
from guardrails.policy import Policy, State
from router.segments import DIMENSIONS


def ab_worse(p: Policy, e: Evidence) -> Result:
    """Early rollback. Default: the always-valid confidence sequence (stats.sequential_difference)
    says CTR difference < 0; `early_rollback = "literal"` uses P(worse) > 0.9 as written."""
    if e.champion.clicks == 0 or e.challenger.clicks == 0:
        return Result("ab_worse", None, "", State.WAITING, 3, "no clicks yet")
    if p.early_rollback == "literal":
        t = p.guards.literal_p_worse
        state = State.FAIL if stats.literal_worse(e.comparison, t) else State.PASS
        return Result(
            "ab_worse", e.comparison.p_worse, f"P(worse) <= {t:g}", state, 3, "literal rule"
        )
    s = e.sequential
    state = State.FAIL if s.challenger_worse else State.PASS
    return Result(
        "ab_worse",
        s.upper,
        "CTR difference upper bound >= 0",
        state,
        3,
        f"P(worse) {e.comparison.p_worse:.3f}; always-valid bound, "
        f"alpha {s.alpha:g}, N* {s.n_star:g}",
    )


def at_judgement(p: Policy, e: Evidence) -> bool:
    """Whether the phase's minimum duration and sample are reached: the moment a decision
    check is judged (judging it every second from the start would act on noise)."""
    if not e.phase:
        return True
    return e.time_in_phase_s >= p.min_s(e.phase) and e.challenger.impressions >= p.min_impressions(
        e.phase
    )


def segment_probability_needed(p: Policy, judged: int) -> float:
    """The P(degraded) a segment value must exceed to fail, Bonferroni-corrected over the
    `judged` values."""
    return 1 - (1 - p.guards.segment_probability) / max(judged, 1)


def segment_degradation(p: Policy, e: Evidence) -> Result:
    """Per segment value of every dimension: P(challenger CTR < (1 - 5%) x champion's). Many
    values are compared at once, so the probability each must pass is Bonferroni-corrected
    (0.9 over 13 values: 0.9923 each); and it is a decision check, acted on only from the
    phase's minimum duration and sample on."""
    g = p.guards
    enough = [s for s in e.segments if s.enough]
    needed = segment_probability_needed(p, len(enough))
    threshold = f"no segment < -{g.max_segment_degradation:.0%} with P > {needed:.4g}"
    failing = [s for s in enough if s.p_degraded > needed]
    if failing:
        s = min(failing, key=lambda s: s.change)
        detail = f"{s.dimension}={s.value}, P(degraded) {s.p_degraded:.4f}"
        if not at_judgement(p, e):
            return Result(
                "segment_degradation",
                s.change,
                threshold,
                State.WAITING,
                4,
                f"{detail}; judged at the phase minimum",
            )
        return Result("segment_degradation", s.change, threshold, State.FAIL, 4, detail, stops=True)
    if not enough:
        return Result(
            "segment_degradation",
            None,
            threshold,
            State.WAITING,
            4,
            f"no segment has {g.min_segment_clicks} clicks per arm yet",
        )
    worst = min(enough, key=lambda s: s.change)
    dims = {s.dimension for s in enough}
    state = State.PASS if dims == set(DIMENSIONS) else State.WAITING
    return Result(
        "segment_degradation",
        worst.change,
        threshold,
        state,
        4,
        f"worst {worst.dimension}={worst.value}; {len(enough)} segments judged",
    )
