"""What advancing from a phase waits for: its minimum duration and sample, and its own
comparison thresholds (P(better), uplift) and, in the last phase, the total duration.
These never fail; a phase that reaches its maximum still waiting on them stops."""

from __future__ import annotations

from guardrails.evidence import Evidence, Result
from guardrails.policy import Policy, State


def advance_checks(p: Policy, e: Evidence, phase: int) -> list[Result]:
    spec = p.phase(phase)
    out = []
    min_s = p.min_s(phase)
    out.append(
        Result(
            "min_duration",
            e.time_in_phase_s,
            f">= {min_s:g} s",
            State.PASS if e.time_in_phase_s >= min_s else State.WAITING,
            phase,
            f"{spec.min_hours:g} h x time_scale {p.time_scale:g}",
        )
    )
    need = p.min_impressions(phase)
    have = e.challenger.impressions
    out.append(
        Result(
            "min_impressions",
            float(have),
            f">= {need}",
            State.PASS if have >= need else State.WAITING,
            phase,
            "challenger impressions since the rollout started",
        )
    )
    c = e.comparison
    if spec.p_better > 0:
        # Phase 3's "or inconclusive": not clearly worse either (P(worse) within the literal
        # rule's line); a clearly worse challenger waits here until ab_worse or the maximum.
        inconclusive = c.method != "none" and c.p_worse <= p.guards.literal_p_worse
        ok = c.p_better > spec.p_better or (spec.inconclusive_ok and inconclusive)
        out.append(
            Result(
                "p_better",
                c.p_better,
                f"> {spec.p_better:g}" + (" or inconclusive" if spec.inconclusive_ok else ""),
                State.PASS if ok else State.WAITING,
                phase,
                c.method,
            )
        )
    if spec.min_uplift > -1:
        ok = c.uplift > spec.min_uplift
        out.append(
            Result(
                "uplift",
                c.uplift,
                f"> {spec.min_uplift:.0%}",
                State.PASS if ok else State.WAITING,
                phase,
                f"95% interval {c.uplift_low:+.2%} to {c.uplift_high:+.2%}",
            )
        )
    if phase == len(p.phases):
        need_s = p.promote_after_s
        out.append(
            Result(
                "total_duration",
                e.total_s,
                f">= {need_s:g} s",
                State.PASS if e.total_s >= need_s else State.WAITING,
                phase,
                f"{p.promote_after_days:g} days x time_scale {p.time_scale:g}",
            )
        )
    return out
