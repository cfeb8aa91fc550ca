"""Phase 1's guardrails: catastrophic failures of the challenger (broken predictions, errors,
latency, a collapsed or drifted output, a broken split, no clicks). They keep applying in
every later phase and act at once: the evaluator looks every second, so each either uses an
always-valid test or waits for a sample large enough that noise cannot fail it."""

from __future__ import annotations

import math
from statistics import NormalDist

from guardrails.evidence import Evidence, Result
from guardrails.measures import (
    distribution_kernel,
    error_evalue_kernel,
    srm_kernel,
    srm_sequential_kernel,
    wilson_kernel,
)
from guardrails.policy import Guards, Policy, State


def two_sided_z(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence`."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def error_evalue_line(g: Guards) -> float:
    """The log e-value at which `error_rate` fails: 1 / (1 - confidence)."""
    return math.log(1.0 / (1.0 - g.confidence))


def _judged(
    name: str, value: float, threshold: str, enough: bool, failed: bool, detail: str
) -> Result:
    """A check that waits for its sample, then passes or fails."""
    state = State.WAITING
    if enough:
        state = State.FAIL if failed else State.PASS
    return Result(name, value, threshold, state, 1, detail)


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
    (measures.error_evalue_kernel): fails when the evidence that the rate is above the limit
    reaches 1 / (1 - confidence), an error rate of 0.1% can be checked every second."""
    g = p.guards
    arm = e.challenger
    limit = g.max_error_rate
    log_e = error_evalue_kernel(float(arm.errors), float(arm.requests), limit)
    detail = (
        f"{arm.errors} errors in {arm.requests} requests, e-value {math.exp(min(log_e, 700)):.3g}"
    )
    if log_e >= error_evalue_line(g):
        return Result("error_rate", arm.error_rate, f"< {limit:.2%}", State.FAIL, 1, detail)
    passing = arm.requests >= g.min_requests and arm.error_rate < limit
    state = State.PASS if passing else State.WAITING
    return Result("error_rate", arm.error_rate, f"< {limit:.2%}", state, 1, detail)


def segment_error_rate(p: Policy, e: Evidence) -> Result:
    g = p.guards
    z = two_sided_z(g.confidence)
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
    low, _ = wilson_kernel(float(c.timeouts), float(c.requests), two_sided_z(g.confidence))
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
    enough = min(e.champion.predictions, e.challenger.predictions) >= p.guards.min_predictions
    ks, sd_b, sd_c = distribution_kernel(e.champion.pred_hist, e.challenger.pred_hist)
    return enough, ks, sd_b, sd_c


def prediction_spread(p: Policy, e: Evidence) -> Result:
    """A collapsed challenger (constant or nearly constant outputs) on the same traffic."""
    least = p.guards.min_prediction_spread
    enough, _, sd_b, sd_c = _distribution(p, e)
    ratio = sd_c / sd_b if sd_b > 0 else 1.0
    return _judged(
        "prediction_spread",
        ratio,
        f">= {least:g}",
        enough,
        ratio < least,
        "sd of challenger / champion predictions",
    )


def prediction_shift(p: Policy, e: Evidence) -> Result:
    """A drifted challenger: Kolmogorov-Smirnov distance of the two prediction histograms."""
    most = p.guards.max_prediction_ks
    enough, ks, _, _ = _distribution(p, e)
    return _judged(
        "prediction_shift",
        ks,
        f"<= {most:g}",
        enough,
        ks > most,
        "KS distance between the arms' predictions",
    )


def sample_ratio(p: Policy, e: Evidence) -> Result:
    """Requests per arm since the phase started against the split, with the always-valid
    test (measures.srm_sequential_kernel); the plain chi-square p is in the detail."""
    g = p.guards
    n_b, n_c = e.phase_requests
    log_bf = srm_sequential_kernel(float(n_b), float(n_c), float(e.split_bp), g.srm_concentration)
    pvalue = min(1.0, math.exp(-log_bf))
    _, chi2_p = srm_kernel(float(n_b), float(n_c), float(e.split_bp))
    return _judged(
        "sample_ratio",
        pvalue,
        f"always-valid p >= {g.srm_p:g}",
        n_b + n_c >= g.min_srm_requests,
        pvalue < g.srm_p,
        f"{n_c} of {n_b + n_c} requests to the challenger at {e.split_bp} bp "
        f"(chi-square p {chi2_p:.3g})",
    )


def clicks_per_10k(p: Policy, e: Evidence) -> Result:
    g = p.guards
    arm = e.challenger
    rate = arm.ctr * 10_000
    return _judged(
        "clicks_per_10k",
        rate,
        f">= {g.min_clicks_per_10k:g}",
        arm.impressions >= g.min_ctr_impressions,
        rate < g.min_clicks_per_10k,
        f"{arm.clicks} clicks in {arm.impressions} impressions",
    )
