"""Every guardrail, as a function of the rollout's evidence returning a `Result`.

Each result has a state: `fail` (act now: roll back, or stop for segment degradation
and the maximum duration), `pass`, or `waiting` (too little evidence to say either —
never passed or failed on noise). `evaluate` lists the results that apply in a phase:
each phase's breach checks keep applying in later phases; the advance criteria (P(better),
uplift, duration, sample) are the current phase's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from guardrails import stats
from guardrails.measures import (
    FAIL,
    PASS,
    ArmMetrics,
    calibration_kernel,
    distribution_kernel,
    error_evalue_kernel,
    srm_kernel,
    srm_sequential_kernel,
    wilson_kernel,
)
from guardrails.policy import Policy, State
from router.segments import DIMENSIONS


@dataclass(frozen=True)
class Result:
    name: str
    value: float | str | None
    threshold: str
    state: State
    phase: int  # the phase that introduced it
    detail: str = ""
    stops: bool = False  # a failure stops the rollout rather than marking a broken model

    @property
    def value_text(self) -> str:
        if isinstance(self.value, float):
            return f"{self.value:.4g}"
        return str(self.value)

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        return {
            "name": self.name,
            "value": value,
            "threshold": self.threshold,
            "state": self.state.value,
            "phase": self.phase,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SegmentRow:
    dimension: str
    value: str
    champion_ctr: float
    challenger_ctr: float
    change: float
    p_degraded: float
    enough: bool


@dataclass(frozen=True)
class Evidence:
    """What the evaluator knows this tick. The champion's counts are since the rollout
    started (a baseline is subtracted), the challenger's since its slot was loaded."""

    champion: ArmMetrics
    challenger: ArmMetrics
    recent: ArmMetrics | None  # the challenger over the last `window_s`
    phase_requests: tuple[int, int]  # champion, challenger since the phase started
    split_bp: int
    comparison: stats.Comparison
    sequential: stats.SequentialResult
    segments: list[SegmentRow]
    time_in_phase_s: float
    total_s: float
    phase: int = 0  # 0: judge every decision check now (unit tests of single checks)


def gather(
    policy: Policy,
    champion: ArmMetrics,
    challenger: ArmMetrics,
    recent: ArmMetrics | None,
    phase_requests: tuple[int, int],
    split_bp: int,
    time_in_phase_s: float,
    total_s: float,
    phase: int = 0,
) -> Evidence:
    b = stats.BetaArm(champion.impressions, champion.clicks)
    c = stats.BetaArm(challenger.impressions, challenger.clicks)
    comparison = stats.compare(b, c)
    sequential = stats.sequential_difference(
        b, c, alpha=policy.sequential_alpha, n_star=policy.n_star
    )
    g = policy.guards
    rows = champion.marginals.labels
    mb, mc = champion.marginals.table, challenger.marginals.table
    seg = stats.segment_degradation(
        mb[:, 2], mb[:, 3], mc[:, 2], mc[:, 3], g.max_segment_degradation, g.min_segment_clicks
    )
    segments = [
        SegmentRow(
            dim,
            value,
            float(mb[i, 3] / mb[i, 2]) if mb[i, 2] else 0.0,
            float(mc[i, 3] / mc[i, 2]) if mc[i, 2] else 0.0,
            float(seg.change[i]),
            float(seg.p_degraded[i]),
            bool(seg.enough[i]),
        )
        for i, (dim, value) in enumerate(rows)
    ]
    return Evidence(
        champion,
        challenger,
        recent,
        phase_requests,
        split_bp,
        comparison,
        sequential,
        segments,
        time_in_phase_s,
        total_s,
        phase,
    )


def _z(confidence: float) -> float:
    return float(stats._norm_ppf(0.5 + confidence / 2))


# --- phase 1: catastrophic failures ----------------------------------------------------------


def predictions_in_range(p: Policy, e: Evidence) -> Result:
    bad = e.challenger.out_of_range
    state = State.FAIL if bad else State.PASS if e.challenger.predictions else State.WAITING
    return Result(
        "predictions_in_range",
        float(bad),
        "0 outside [0, 1]",
        state,
        1,
        "NaN or outside [0, 1]" if bad else "",
    )


def error_rate(p: Policy, e: Evidence) -> Result:
    """Errors / requests of the challenger since it started, with an always-valid test
    (metrics.error_evalue_kernel): fails when the evidence that the rate is above the limit
    reaches 1 / (1 - confidence), an error rate of 0.1% can be checked every second."""
    g = p.guards
    arm = e.challenger
    limit = g.max_error_rate
    log_e = error_evalue_kernel(float(arm.errors), float(arm.requests), limit)
    detail = (
        f"{arm.errors} errors in {arm.requests} requests, e-value {math.exp(min(log_e, 700)):.3g}"
    )
    if log_e >= math.log(1.0 / (1.0 - g.confidence)):
        return Result("error_rate", arm.error_rate, f"< {limit:.2%}", State.FAIL, 1, detail)
    passing = arm.requests >= g.min_requests and arm.error_rate < limit
    state = State.PASS if passing else State.WAITING
    return Result("error_rate", arm.error_rate, f"< {limit:.2%}", state, 1, detail)


def segment_error_rate(p: Policy, e: Evidence) -> Result:
    g = p.guards
    z = _z(g.confidence)
    judged, worst, worst_name = 0, 0.0, ""
    for value, row in e.challenger.marginals.of("publisher_category"):
        requests, errors = float(row[0]), float(row[1])
        if requests < g.min_segment_requests:
            continue
        judged += 1
        rate = errors / requests
        if rate >= worst:
            worst, worst_name = rate, value
        low, _ = wilson_kernel(errors, requests, z)
        if low > g.max_segment_error_rate:
            return Result(
                "segment_error_rate",
                rate,
                f"<= {g.max_segment_error_rate:.0%}",
                State.FAIL,
                1,
                f"publisher_category={value}",
            )
    state = State.PASS if judged and worst <= g.max_segment_error_rate else State.WAITING
    detail = f"worst publisher_category={worst_name}" if judged else "no segment with data yet"
    return Result(
        "segment_error_rate", worst, f"<= {g.max_segment_error_rate:.0%}", state, 1, detail
    )


def latency_p99(p: Policy, e: Evidence) -> Result:
    """The challenger's p99 (time in the handler, from the merged HDR histograms). Requests
    cut off by the challenger timeout count here: over 1% of them means p99 is past it."""
    g = p.guards
    threshold = f"< {g.max_p99_ms:g} ms"
    value, judged = e.challenger.latency_us[1] / 1000, False
    c = e.challenger
    low, _ = wilson_kernel(float(c.timeouts), float(c.requests), _z(g.confidence))
    if low > 0.01:
        return Result(
            "latency_p99",
            value,
            threshold,
            State.FAIL,
            1,
            f"{c.timeouts} of {c.requests} requests hit the challenger timeout",
        )
    for arm in (e.challenger, e.recent):
        if arm is None or arm.latency_count < g.min_latency_samples:
            continue
        judged = True
        p99 = arm.latency_us[1] / 1000
        if p99 >= g.max_p99_ms:
            return Result(
                "latency_p99",
                p99,
                threshold,
                State.FAIL,
                1,
                f"p99.9 {arm.latency_us[2] / 1000:.2f} ms over {arm.latency_count}",
            )
    state = State.PASS if judged else State.WAITING
    return Result(
        "latency_p99", value, threshold, state, 1, f"{e.challenger.latency_count} requests timed"
    )


def _distribution(p: Policy, e: Evidence) -> tuple[bool, float, float, float]:
    g = p.guards
    enough = min(e.champion.predictions, e.challenger.predictions) >= g.min_predictions
    ks, sd_b, sd_c = distribution_kernel(e.champion.pred_hist, e.challenger.pred_hist)
    return enough, ks, sd_b, sd_c


def prediction_spread(p: Policy, e: Evidence) -> Result:
    """A collapsed challenger (constant or nearly constant outputs) on the same traffic."""
    g = p.guards
    enough, _, sd_b, sd_c = _distribution(p, e)
    ratio = sd_c / sd_b if sd_b > 0 else 1.0
    state = State.WAITING
    if enough:
        state = State.FAIL if ratio < g.min_prediction_spread else State.PASS
    return Result(
        "prediction_spread",
        ratio,
        f">= {g.min_prediction_spread:g}",
        state,
        1,
        "sd of challenger / champion predictions",
    )


def prediction_shift(p: Policy, e: Evidence) -> Result:
    """A drifted challenger: Kolmogorov-Smirnov distance of the two prediction histograms."""
    g = p.guards
    enough, ks, _, _ = _distribution(p, e)
    state = State.WAITING
    if enough:
        state = State.FAIL if ks > g.max_prediction_ks else State.PASS
    return Result(
        "prediction_shift",
        ks,
        f"<= {g.max_prediction_ks:g}",
        state,
        1,
        "KS distance between the arms' predictions",
    )


def sample_ratio(p: Policy, e: Evidence) -> Result:
    """Requests per arm since the phase started against the split, with the always-valid
    test (metrics.srm_sequential_kernel); the plain chi-square p is in the detail."""
    g = p.guards
    n_b, n_c = e.phase_requests
    log_bf = srm_sequential_kernel(float(n_b), float(n_c), float(e.split_bp), g.srm_concentration)
    pvalue = min(1.0, math.exp(-log_bf))
    _, chi2_p = srm_kernel(float(n_b), float(n_c), float(e.split_bp))
    state = State.WAITING
    if n_b + n_c >= g.min_srm_requests:
        state = State.FAIL if pvalue < g.srm_p else State.PASS
    return Result(
        "sample_ratio",
        pvalue,
        f"always-valid p >= {g.srm_p:g}",
        state,
        1,
        f"{n_c} of {n_b + n_c} requests to the challenger at {e.split_bp} bp "
        f"(chi-square p {chi2_p:.3g})",
    )


def clicks_per_10k(p: Policy, e: Evidence) -> Result:
    g = p.guards
    arm = e.challenger
    rate = arm.ctr * 10_000
    state = State.WAITING
    if arm.impressions >= g.min_ctr_impressions:
        state = State.FAIL if rate < g.min_clicks_per_10k else State.PASS
    return Result(
        "clicks_per_10k",
        rate,
        f">= {g.min_clicks_per_10k:g}",
        state,
        1,
        f"{arm.clicks} clicks in {arm.impressions} impressions",
    )


# --- phase 2: calibration ----------------------------------------------------------------------


def calibration(p: Policy, e: Evidence) -> Result:
    g = p.guards
    arm = e.challenger
    _, _, _, state = calibration_kernel(
        np.array([float(arm.clicks)]),
        np.array([arm.predicted]),
        g.calibration_low,
        g.calibration_high,
        _z(g.confidence),
        float(g.min_calibration_clicks),
    )
    return Result(
        "calibration",
        arm.calibration,
        f"{g.calibration_low:g}–{g.calibration_high:g}",
        _state(int(state[0])),
        2,
        f"predicted / actual clicks, {arm.clicks} clicks",
    )


def calibration_buckets(p: Policy, e: Evidence) -> Result:
    """Per prediction bucket; the confidence is split across the judged buckets (Bonferroni),
    as many buckets are looked at together."""
    g = p.guards
    arm = e.challenger
    judged = max(int((arm.bucket_clicks >= g.min_bucket_clicks).sum()), 1)
    z = _z(1 - (1 - g.confidence) / judged)
    ratio, _, _, state = calibration_kernel(
        arm.bucket_clicks,
        arm.bucket_predicted,
        g.bucket_low,
        g.bucket_high,
        z,
        float(g.min_bucket_clicks),
    )
    threshold = f"{g.bucket_low:g}–{g.bucket_high:g}"
    failing = np.flatnonzero(state == FAIL)
    if failing.size:
        i = int(failing[np.argmax(np.abs(np.log(ratio[failing])))])
        return Result(
            "calibration_buckets",
            float(ratio[i]),
            threshold,
            State.FAIL,
            2,
            f"bucket {i} ({int(arm.bucket_clicks[i])} clicks)",
        )
    judged_mask = arm.bucket_clicks >= g.min_bucket_clicks
    if not judged_mask.any():
        return Result(
            "calibration_buckets",
            None,
            threshold,
            State.WAITING,
            2,
            f"no bucket has {g.min_bucket_clicks} clicks yet",
        )
    # A judged bucket passes unless it is surely outside the band: one whose ratio is out
    # only by noise is not failed, and a truly bad one fails as its clicks grow (this check
    # keeps applying in every later phase).
    judged_ratio = ratio[judged_mask]
    worst = float(judged_ratio[np.argmax(np.abs(np.log(judged_ratio)))])
    noisy = int((state[judged_mask] != PASS).sum())
    thin = int(((arm.bucket_clicks > 0) & ~judged_mask).sum())
    return Result(
        "calibration_buckets",
        worst,
        threshold,
        State.PASS,
        2,
        f"{int(judged_mask.sum())} buckets judged ({noisy} outside only by noise), "
        f"{thin} with too few clicks to judge",
    )


def _state(code: int) -> State:
    return State.FAIL if code == FAIL else State.PASS if code == PASS else State.WAITING


# --- phase 3 onwards: the A/B comparison ----------------------------------------------------


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


def _at_judgement(p: Policy, e: Evidence) -> bool:
    """Whether the phase's minimum duration and sample are reached: the moment a decision
    check is judged (judging it every second from the start would act on noise)."""
    if not e.phase:
        return True
    return e.time_in_phase_s >= p.min_s(e.phase) and e.challenger.impressions >= p.min_impressions(
        e.phase
    )


def segment_degradation(p: Policy, e: Evidence) -> Result:
    """Per segment value of every dimension: P(challenger CTR < (1 - 5%) x champion's). Many
    values are compared at once, so the probability each must pass is Bonferroni-corrected
    (0.9 over 13 values: 0.9923 each); and it is a decision check, acted on only from the
    phase's minimum duration and sample on."""
    g = p.guards
    enough = [s for s in e.segments if s.enough]
    needed = 1 - (1 - g.segment_probability) / max(len(enough), 1)
    threshold = f"no segment < -{g.max_segment_degradation:.0%} with P > {needed:.4g}"
    failing = [s for s in enough if s.p_degraded > needed]
    if failing:
        s = min(failing, key=lambda s: s.change)
        detail = f"{s.dimension}={s.value}, P(degraded) {s.p_degraded:.4f}"
        if not _at_judgement(p, e):
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


# --- advance criteria of the current phase -------------------------------------------------


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


BREACH_CHECKS: tuple[tuple[int, Callable[[Policy, Evidence], Result]], ...] = (
    (1, predictions_in_range),
    (1, error_rate),
    (1, segment_error_rate),
    (1, latency_p99),
    (1, prediction_spread),
    (1, prediction_shift),
    (1, sample_ratio),
    (1, clicks_per_10k),
    (2, calibration),
    (2, calibration_buckets),
    (3, ab_worse),
    (4, segment_degradation),
)


def evaluate(p: Policy, e: Evidence, phase: int) -> list[Result]:
    """Every result that applies in `phase`, breach checks first."""
    results = [check(p, e) for since, check in BREACH_CHECKS if since <= phase]
    return results + advance_checks(p, e, phase)
