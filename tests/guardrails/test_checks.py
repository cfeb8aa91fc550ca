from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from builders import POLICY, Slot, cell, evidence, healthy, served

from guardrails import checks, safety
from guardrails.checks import Evidence, Result
from guardrails.policy import DAY, Action, Policy, State, decide

LITERAL = dataclasses.replace(POLICY, early_rollback="literal")
GAMING = cell(publisher_category="gaming")
DESKTOP = cell(
    publisher_category="news", device_type="desktop", country_tier="tier1", creative_type="banner"
)
Check = Callable[[Policy, Evidence], Result]


def champion() -> Slot:
    return healthy(scale=10, seed=1)


def against(challenger: Slot, **kw: Any) -> Callable[[], Evidence]:
    """Evidence of `challenger` against a healthy champion, built when the test runs."""
    return lambda: evidence(champion(), challenger, **kw)


def pair(champ: Slot, challenger: Slot, **kw: Any) -> Callable[[], Evidence]:
    return lambda: evidence(champ, challenger, **kw)


# Two segments per arm; the challenger's desktop CTR is 20% below the champion's, with many clicks.
DESKTOP_WORSE = pair(
    Slot().events(10**5, 2_000).events(10**5, 2_000, cell=DESKTOP),
    Slot().events(10**5, 2_000).events(10**5, 1_600, cell=DESKTOP),
)


P, W, F = State.PASS, State.WAITING, State.FAIL
ci = checks
CASES = [
    # predictions within [0, 1]
    (ci.predictions_in_range, against(healthy()), P, "healthy"),
    (ci.predictions_in_range, against(Slot().requests(300, errors=300)), W, "none-served"),
    (ci.predictions_in_range, against(healthy().predictions(np.array([np.nan]))), F, "nan"),
    (ci.predictions_in_range, against(healthy().predictions(np.array([1.2, -0.1]))), F, "range"),
    # error rate
    (ci.error_rate, against(healthy()), P, "no-errors"),
    (ci.error_rate, against(Slot().requests(100)), W, "too-few-requests"),
    (ci.error_rate, against(Slot().requests(1_000, errors=2)), W, "0.2pct-not-sure"),
    (ci.error_rate, against(Slot().requests(2_000, errors=100)), F, "5pct"),
    (ci.error_rate, against(Slot().requests(5, errors=1)), W, "one-early-error-not-enough"),
    # publisher segment errors
    (ci.segment_error_rate, against(healthy()), P, "no-errors"),
    (ci.segment_error_rate, against(Slot().requests(30, errors=30)), W, "too-few-per-segment"),
    (
        ci.segment_error_rate,
        against(healthy().requests(2_000, errors=1_200, cell=GAMING)),
        F,
        "gaming-60pct",
    ),
    # latency
    (ci.latency_p99, against(healthy()), P, "0.8ms"),
    (ci.latency_p99, against(Slot().requests(100, latency_us=12_000)), W, "too-few-timed"),
    (ci.latency_p99, against(healthy().requests(200, latency_us=12_000)), F, "p99-12ms"),
    (
        ci.latency_p99,
        against(healthy(scale=10), recent=Slot().requests(300, latency_us=12_000)),
        F,
        "p99-12ms-in-recent-window",
    ),
    # prediction distribution
    (ci.prediction_spread, against(healthy()), P, "same-spread"),
    (ci.prediction_spread, against(Slot().predictions(np.full(100, 0.03))), W, "too-few"),
    (ci.prediction_spread, against(Slot().predictions(np.full(5_000, 0.03))), F, "constant"),
    (ci.prediction_shift, against(healthy()), P, "same-distribution"),
    (ci.prediction_shift, against(Slot().predictions(served(100, shift=0.3))), W, "too-few"),
    (ci.prediction_shift, against(Slot().predictions(served(5_000, shift=0.3))), F, "shifted"),
    # sample ratio
    (ci.sample_ratio, against(healthy()), P, "on-split"),
    (ci.sample_ratio, against(healthy(), phase_requests=(500, 100)), W, "too-few-requests"),
    (ci.sample_ratio, against(healthy(), phase_requests=(8_000, 2_000)), F, "20pct-at-3pct"),
    # clicks per 10k impressions
    (ci.clicks_per_10k, against(healthy()), P, "200-per-10k"),
    (ci.clicks_per_10k, against(Slot().events(5_000, 0)), W, "too-few-impressions"),
    (ci.clicks_per_10k, against(Slot().events(20_000, 0)), F, "no-clicks-in-20k"),
    # calibration
    (ci.calibration, against(healthy()), P, "1x-400-clicks"),
    (ci.calibration, against(Slot().events(1_000, 20, prediction=0.03)), W, "1.5x-20-clicks"),
    (ci.calibration, against(Slot().events(20_000, 400, prediction=0.03)), F, "1.5x-400-clicks"),
    (ci.calibration_buckets, against(healthy()), P, "1x"),
    (ci.calibration_buckets, against(Slot().events(800, 20, prediction=0.05)), W, "2x-20-clicks"),
    (
        ci.calibration_buckets,
        against(Slot().events(3_000, 60, prediction=0.03)),
        P,
        "1.5x-60-clicks-out-only-by-noise-passes",
    ),
    (
        ci.calibration_buckets,
        against(healthy().events(20_000, 500, prediction=0.05)),
        F,
        "one-bucket-2x",
    ),
    # the A/B comparison
    (ci.ab_worse, against(healthy(scale=2, seed=2)), P, "equal"),
    (ci.ab_worse, against(Slot().events(20_000, 0)), W, "no-clicks"),
    (ci.ab_worse, pair(Slot().events(10**6, 20_000), Slot().events(2 * 10**5, 3_000)), F, "lower"),
    (
        ci.ab_worse,
        pair(Slot().events(10**6, 20_000), Slot().events(2 * 10**5, 3_000), policy=LITERAL),
        F,
        "lower-literal",
    ),
    (ci.segment_degradation, against(healthy(scale=2, seed=2)), P, "equal"),
    (ci.segment_degradation, pair(Slot().events(5_000, 100), Slot().events(5_000, 100)), W, "thin"),
    (ci.segment_degradation, DESKTOP_WORSE, F, "desktop-20pct-worse"),
]


@pytest.mark.parametrize(
    ("check", "make", "state"),
    [pytest.param(c, m, s, id=f"{c.__name__}-{s.value}-{i}") for c, m, s, i in CASES],
)
def test_guardrail_state(check: Check, make: Callable[[], Evidence], state: State) -> None:
    r = check(POLICY, make())
    assert r.state == state, r
    assert r.name == check.__name__
    assert r.stops is (state == F and check is ci.segment_degradation)


@pytest.mark.parametrize(
    ("confidence", "z"),
    [
        pytest.param(0.95, 1.959963984540054, id="95pct"),
        pytest.param(0.999, 3.2905267314918945, id="99.9pct"),
        pytest.param(1 - 1e-9, 6.1094102, id="bonferroni-tail"),
    ],
)
def test_two_sided_z_is_the_normal_quantile(confidence: float, z: float) -> None:
    assert safety.two_sided_z(confidence) == pytest.approx(z, rel=1e-7)


def test_error_evalue_line_is_one_over_the_miss_rate() -> None:
    assert safety.error_evalue_line(POLICY.guards) == pytest.approx(np.log(1000))


def test_error_rate_fail_reports_counts_and_evidence() -> None:
    r = ci.error_rate(POLICY, against(Slot().requests(400, errors=40))())
    assert r.value == pytest.approx(0.1)
    assert r.detail.startswith("40 errors in 400 requests, e-value ")


def test_error_rate_half_the_limit_never_fails_however_often_looked_at() -> None:
    # 0.05% errors, looked at after every 500 requests up to 200,000: a fixed-level bound
    # checked that often fails; the always-valid test must not.
    rng = np.random.default_rng(4)
    errors = np.cumsum(rng.random(200_000) < 0.0005)
    for n in range(500, 200_001, 500):
        e = against(Slot().requests(n, errors=int(errors[n - 1])))()
        assert ci.error_rate(POLICY, e).state != F, n


def test_segment_error_rate_fail_names_the_segment() -> None:
    e = against(healthy().requests(2_000, errors=1_200, cell=GAMING))()
    r = ci.segment_error_rate(POLICY, e)
    assert (r.value, r.detail) == (pytest.approx(0.6), "publisher_category=gaming")


def test_latency_p99_fail_value_is_the_slow_requests() -> None:
    r = ci.latency_p99(POLICY, against(healthy().requests(200, latency_us=12_000))())
    assert r.value == pytest.approx(12.0, rel=0.01)


def test_calibration_buckets_fail_names_the_bucket() -> None:
    e = against(healthy().events(20_000, 500, prediction=0.05))()
    r = ci.calibration_buckets(POLICY, e)
    assert r.value == pytest.approx(2.0)
    assert r.detail == "bucket 5 (500 clicks)"


def test_ab_worse_sequential_ignores_what_the_literal_rule_fires_on() -> None:
    make = pair(Slot().events(10**5, 2_000), Slot().events(2 * 10**4, 370))
    assert make().comparison.p_worse > 0.9
    assert ci.ab_worse(POLICY, make()).state == P
    assert ci.ab_worse(LITERAL, make()).state == F


def test_segment_degradation_fail_names_the_worst_segment() -> None:
    r = ci.segment_degradation(POLICY, DESKTOP_WORSE())
    assert r.value == pytest.approx(-0.2)
    assert r.detail.startswith("device_type=desktop")


# --- evaluate and the advance criteria ----------------------------------------------------------

PHASE_1 = [
    "predictions_in_range",
    "error_rate",
    "segment_error_rate",
    "latency_p99",
    "prediction_spread",
    "prediction_shift",
    "paired_spread",
    "paired_correlation",
    "paired_mean_ratio",
    "sample_ratio",
    "clicks_per_10k",
]
BREACH = {
    1: PHASE_1,
    2: [*PHASE_1, "calibration", "calibration_buckets"],
    3: [*PHASE_1, "calibration", "calibration_buckets", "ab_worse"],
    4: [*PHASE_1, "calibration", "calibration_buckets", "ab_worse", "segment_degradation"],
}
BREACH[5] = BREACH[4]
ADVANCE = {
    1: ["min_duration", "min_impressions"],
    2: ["min_duration", "min_impressions"],
    3: ["min_duration", "min_impressions", "p_better"],
    4: ["min_duration", "min_impressions", "p_better", "uplift"],
    5: ["min_duration", "min_impressions", "p_better", "uplift", "total_duration"],
}


@pytest.mark.parametrize("phase", [pytest.param(n, id=f"phase-{n}") for n in range(1, 6)])
def test_evaluate_lists_the_phase_checks(phase: int) -> None:
    results = ci.evaluate(POLICY, against(healthy())(), phase)
    assert [r.name for r in results] == BREACH[phase] + ADVANCE[phase]
    assert all(r.phase == phase for r in results[len(BREACH[phase]) :])


def test_evaluate_leaves_the_paired_checks_out_when_paired_scoring_is_off() -> None:
    off = dataclasses.replace(POLICY, paired=False)
    names = [r.name for r in ci.evaluate(off, against(healthy())(), 1)]
    assert names == [n for n in PHASE_1 if not n.startswith("paired_")] + ADVANCE[1]


def better_pair(phase: int, **kw: Any) -> Evidence:
    """A champion and a challenger 5% better in CTR, with enough data for phase 5."""
    champ = Slot().requests(50_000).predictions(served(50_000, 1)).events(2 * 10**6, 40_000)
    rows = served(5_000, 2)
    chall = Slot().requests(5_000).predictions(rows).pairs(rows, rows).events(10**6, 21_000)
    return evidence(champ, chall, split_bp=POLICY.phase(phase).split_bp, **kw)


@pytest.mark.parametrize(
    ("phase", "action"),
    [
        *(pytest.param(n, Action.ADVANCE, id=f"phase-{n}") for n in range(1, 5)),
        pytest.param(5, Action.PROMOTE, id="phase-5"),
    ],
)
def test_evaluate_better_challenger_advances(phase: int, action: Action) -> None:
    e = better_pair(phase, time_in_phase_s=POLICY.min_s(phase), total_s=13 * DAY)
    results = ci.evaluate(POLICY, e, phase)
    assert [r.name for r in results if r.state != P] == []
    assert decide(POLICY, phase, results, e.time_in_phase_s, False).action == action


def _states(results: list[Result]) -> dict[str, State]:
    return {r.name: r.state for r in results}


@pytest.mark.parametrize(
    ("offset", "state"),
    [pytest.param(-1.0, W, id="just-before"), pytest.param(0.0, P, id="at-minimum")],
)
@pytest.mark.parametrize("scale", [pytest.param(1.0, id="real"), pytest.param(0.001, id="scaled")])
def test_advance_checks_min_duration(offset: float, state: State, scale: float) -> None:
    p = dataclasses.replace(POLICY, time_scale=scale)
    for phase in range(1, 6):
        e = better_pair(phase, time_in_phase_s=p.min_s(phase) + offset)
        assert _states(ci.advance_checks(p, e, phase))["min_duration"] == state


@pytest.mark.parametrize(
    ("impressions", "state"),
    [pytest.param(49_999, W, id="one-short"), pytest.param(50_000, P, id="enough")],
)
def test_advance_checks_min_impressions(impressions: int, state: State) -> None:
    e = against(Slot().events(impressions, impressions // 50))()
    assert _states(ci.advance_checks(POLICY, e, 2))["min_impressions"] == state


@pytest.mark.parametrize(
    ("total_days", "state"),
    [pytest.param(11.99, W, id="under-12-days"), pytest.param(12.0, P, id="12-days")],
)
def test_advance_checks_total_duration(total_days: float, state: State) -> None:
    e = better_pair(5, total_s=total_days * DAY)
    assert _states(ci.advance_checks(POLICY, e, 5))["total_duration"] == state


@pytest.mark.parametrize(
    ("phase", "make", "p_better", "uplift"),
    [
        pytest.param(3, against(healthy(scale=2, seed=2)), P, None, id="3-equal-inconclusive"),
        pytest.param(3, against(Slot()), W, None, id="3-no-impressions"),
        pytest.param(4, against(healthy(scale=2, seed=2)), W, W, id="4-equal"),
        pytest.param(4, lambda: better_pair(4), P, P, id="4-better"),
        pytest.param(5, lambda: better_pair(5), P, P, id="5-better"),
    ],
)
def test_advance_checks_comparison(
    phase: int, make: Callable[[], Evidence], p_better: State, uplift: State | None
) -> None:
    states = _states(ci.advance_checks(POLICY, make(), phase))
    assert states["p_better"] == p_better
    assert states.get("uplift") == uplift
