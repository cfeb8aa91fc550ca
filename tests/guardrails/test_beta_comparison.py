"""Bayesian A/B on CTR (guardrails/beta_comparison.py): BetaArm, the exact kernel against its
reference and quadrature, compare against Monte Carlo and gbstats, literal_worse."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from guardrails import beta_comparison
from guardrails.beta_comparison import (
    EXACT_CUTOFF,
    BetaArm,
    Comparison,
    beta_compare_kernel,
    compare,
    literal_worse,
)

MC_DRAWS = 400_000


def _beta_draws(arm: BetaArm, rng: np.random.Generator) -> np.ndarray:
    a, b = arm.posterior()
    return rng.beta(a, b, MC_DRAWS)


def _p_greater_quadrature(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(X2 > X1) = integral of f1(x) (1 - F2(x)) dx, by scipy quadrature around X1's mass."""
    mean = a1 / (a1 + b1)
    sd = math.sqrt(a1 * b1 / ((a1 + b1) ** 2 * (a1 + b1 + 1)))
    lo, hi = max(0.0, mean - 40 * sd), min(1.0, mean + 40 * sd)
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a1, b1) * stats.beta.sf(x, a2, b2),
        lo,
        hi,
        points=[mean],
        epsabs=1e-13,
        epsrel=1e-11,
        limit=500,
    )
    return float(value)


# --- BetaArm ------------------------------------------------------------------------------------


def test_beta_arm_add_sums_worker_counters() -> None:
    workers = [BetaArm(100, 3), BetaArm(250, 7), BetaArm(0, 0)]
    assert sum(workers, BetaArm()) == BetaArm(350, 10)


def test_beta_arm_sub_removes_baseline() -> None:
    assert BetaArm(1_000, 40) - BetaArm(400, 15) == BetaArm(600, 25)


def test_beta_arm_posterior_adds_prior() -> None:
    assert BetaArm(1_000, 40).posterior() == (41.0, 961.0)
    assert BetaArm(1_000, 40).posterior((0.5, 2.0)) == (40.5, 962.0)


# --- exact kernel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_a", "b_a", "a_b", "b_b"),
    [
        pytest.param(3.0, 10.0, 5.0, 8.0, id="tiny"),
        pytest.param(21.0, 981.0, 30.0, 972.0, id="thousand-impressions"),
        pytest.param(150.0, 2e5, 140.0, 1e5, id="unequal-arms"),
        pytest.param(1200.0, 6e7, 900.0, 4e7, id="tens-of-millions"),
    ],
)
def test_sum_greater_matches_reference_formula(
    a_a: float, b_a: float, a_b: float, b_b: float
) -> None:
    # The reference differs only by lgamma cancellation (~1e-7 relative at 1e7..1e8).
    assert beta_comparison._sum_greater(a_a, b_a, a_b, b_b) == pytest.approx(
        beta_comparison._sum_greater_reference(a_a, b_a, a_b, b_b), rel=1e-6, abs=1e-12
    )


@pytest.mark.parametrize(
    ("x", "h"),
    [
        pytest.param(1e8, 2000, id="1e8"),
        pytest.param(1e7, 1, id="one-step"),
        pytest.param(12.0, 500, id="small-x"),
    ],
)
def test_lgamma_diff_matches_product_identity(x: float, h: int) -> None:
    # lgamma(x + h) - lgamma(x) = sum_{k<h} log(x + k) exactly for whole h; the naive difference
    # of two lgammas near 1.7e9 is off by ~2e-7 at x = 1e8.
    reference = math.fsum(math.log(x + k) for k in range(h))
    assert beta_comparison._lgamma_diff(x, float(h)) == pytest.approx(
        reference, rel=1e-14, abs=1e-12
    )


@pytest.mark.parametrize(
    ("a1", "b1", "a2", "b2"),
    [
        pytest.param(3.0, 10.0, 5.0, 8.0, id="sum-over-challenger-a"),
        pytest.param(9.0, 2.0, 7.0, 3.0, id="sum-over-champion-b"),
        pytest.param(40.0, 5.0, 60.0, 4.0, id="sum-over-challenger-b"),
        pytest.param(2.0, 1e6, 3.0, 1e6, id="sum-over-champion-a"),
        pytest.param(1500.0, 5e4, 1450.0, 5e4, id="near-cutoff"),
    ],
)
def test_beta_compare_kernel_exact_matches_quadrature(
    a1: float, b1: float, a2: float, b2: float
) -> None:
    p_better, p_worse, exact = beta_compare_kernel(a1, b1, a2, b2, float(EXACT_CUTOFF))
    assert exact == 1
    assert p_better == pytest.approx(_p_greater_quadrature(a1, b1, a2, b2), abs=1e-10)
    assert p_better + p_worse == pytest.approx(1.0, abs=1e-12)


# --- compare ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param(BetaArm(1_000, 20), BetaArm(1_000, 30), id="challenger-ahead"),
        pytest.param(BetaArm(50, 3), BetaArm(40, 1), id="tiny-counts"),
        pytest.param(BetaArm(100_000, 2_000), BetaArm(25_000, 520), id="phase3-split"),
        pytest.param(BetaArm(500, 0), BetaArm(500, 2), id="champion-no-clicks"),
    ],
)
def test_compare_p_better_matches_monte_carlo(champion: BetaArm, challenger: BetaArm) -> None:
    rng = np.random.default_rng(7)
    mc = float(np.mean(_beta_draws(challenger, rng) > _beta_draws(champion, rng)))
    # Tolerance: 5 Monte-Carlo standard errors sqrt(p(1-p)/n) (<= 4e-3 at 400k draws).
    tolerance = 5 * math.sqrt(max(mc * (1 - mc), 1e-4) / MC_DRAWS)
    result = compare(champion, challenger)
    assert result.method == "exact"
    assert result.p_better == pytest.approx(mc, abs=tolerance)
    assert result.p_worse == pytest.approx(1 - mc, abs=tolerance)


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param(BetaArm(1_000, 20), BetaArm(1_000, 30), id="small"),
        pytest.param(BetaArm(1_000_000, 20_000), BetaArm(250_000, 4_950), id="phase3-split"),
    ],
)
def test_compare_uplift_and_interval_match_monte_carlo(
    champion: BetaArm, challenger: BetaArm
) -> None:
    rng = np.random.default_rng(11)
    x1, x2 = _beta_draws(champion, rng), _beta_draws(challenger, rng)
    lift = x2 / x1 - 1
    result = compare(champion, challenger, ci=0.9)
    # E[(p_c - p_b)/p_b] is exact in closed form: agree within 5 MC standard errors.
    assert result.uplift == pytest.approx(lift.mean(), abs=5 * lift.std() / math.sqrt(MC_DRAWS))
    # The interval comes from an approximation of log(p_c/p_b): each tail should hold 5% of the
    # draws; 0.5 percentage point allows the approximation (and ~0.03 pt of MC noise).
    assert np.mean(lift < result.uplift_low) == pytest.approx(0.05, abs=0.005)
    assert np.mean(lift > result.uplift_high) == pytest.approx(0.05, abs=0.005)


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param(BetaArm(10**7, 2_000), BetaArm(10**7, 2_050), id="smallest-a-near-2000"),
        pytest.param(BetaArm(10**5, 2_300), BetaArm(10**5, 2_100), id="both-a-above-2000"),
        pytest.param(BetaArm(4 * 10**5, 8_000), BetaArm(10**5, 1_990), id="unequal-arms"),
        pytest.param(BetaArm(2_500, 2_499 - 2_000), BetaArm(2_400, 2_400 - 2_000), id="high-ctr"),
    ],
)
def test_compare_exact_and_normal_paths_agree_near_cutoff(
    champion: BetaArm, challenger: BetaArm
) -> None:
    a1, b1 = champion.posterior()
    a2, b2 = challenger.posterior()
    exact = beta_compare_kernel(a1, b1, a2, b2, 1e12)
    normal = beta_compare_kernel(a1, b1, a2, b2, 0.0)
    assert (exact[2], normal[2]) == (1, 0)
    # Measured worst case over CTR 0.2%..50%, arm ratio 1..20, |z| <= 6: 4.2e-5 at a = 2000
    # (the Cornish-Fisher-corrected normal errs by ~0.09/a); 1e-4 leaves room and still fails for
    # a plain normal (3e-3 there).
    assert normal[0] == pytest.approx(exact[0], abs=1e-4)
    assert normal[1] == pytest.approx(exact[1], abs=1e-4)


def test_compare_switches_to_normal_above_cutoff() -> None:
    # With the Beta(1, 1) prior the smallest parameter is clicks + 1.
    challenger = BetaArm(10**6, EXACT_CUTOFF + 50)
    at = compare(BetaArm(10**6, EXACT_CUTOFF - 1), challenger)
    above = compare(BetaArm(10**6, EXACT_CUTOFF), challenger)
    assert (at.method, above.method) == ("exact", "normal")
    a1, b1 = BetaArm(10**6, EXACT_CUTOFF).posterior()
    a2, b2 = challenger.posterior()
    assert above.p_better == pytest.approx(beta_compare_kernel(a1, b1, a2, b2, 1e12)[0], abs=1e-4)


@pytest.mark.parametrize(
    ("impressions", "lift", "champion_share"),
    [
        pytest.param(10_000_000, 0.01, 0.5, id="10M-plus-1pct"),
        pytest.param(10_000_000, -0.01, 0.5, id="10M-minus-1pct"),
        pytest.param(10_000_000, 0.003, 0.5, id="10M-plus-0.3pct"),
        pytest.param(10_000_000, 0.01, 0.8, id="10M-plus-1pct-80-20"),
        pytest.param(10_000_000, -0.003, 0.8, id="10M-minus-0.3pct-80-20"),
    ],
)
def test_compare_agrees_with_gbstats_chance_to_win(
    impressions: int, lift: float, champion_share: float
) -> None:
    bayesian = pytest.importorskip("gbstats.bayesian.tests")
    statistics = pytest.importorskip("gbstats.models.statistics")
    n1 = round(2 * impressions * champion_share)
    n2 = 2 * impressions - n1
    c1, c2 = round(0.02 * n1), round(0.02 * n2 * (1 + lift))
    gb = bayesian.EffectBayesianABTest(
        statistics.ProportionStatistic(n=n1, sum=c1),
        statistics.ProportionStatistic(n=n2, sum=c2),
    ).compute_result()
    ours = compare(BetaArm(n1, c1), BetaArm(n2, c2))
    sigma = gb.uplift.stddev  # sd of the relative lift, 0.003..0.006 here
    # gbstats takes the relative lift as Gaussian (delta-method variance, flat improper prior).
    # The exact posterior of p_c/p_b - 1 is right-skewed with skewness ~3 sigma, which moves
    # P(lift > 0) by up to phi(0) * 3 sigma / 6 = 0.2 sigma; our Beta(1, 1) prior shifts the
    # relative lift by delta ~ 1/c2 - 1/c1, moving P by up to phi(0) |delta| / sigma.
    delta = 1 / c2 - 1 / c1
    tolerance = 0.2 * sigma + 0.4 * abs(delta) / sigma
    assert ours.p_better == pytest.approx(gb.chance_to_win, abs=tolerance)
    assert ours.uplift == pytest.approx(gb.expected, abs=0.01 * sigma + abs(delta))
    assert ours.uplift_low == pytest.approx(gb.ci[0], abs=0.05 * sigma)
    assert ours.uplift_high == pytest.approx(gb.ci[1], abs=0.05 * sigma)


def test_compare_is_finite_at_1e8_impressions() -> None:
    huge = 10**8
    cases = [
        (BetaArm(huge, 2_000_000), BetaArm(huge, 2_020_000)),  # +1%, z ~ 10
        (BetaArm(huge, 1_000), BetaArm(huge, 1_100)),  # exact path with b ~ 1e8
        (BetaArm(huge, huge // 2), BetaArm(huge, huge // 2 - 10_000)),
        (BetaArm(huge, 0), BetaArm(huge, 0)),
    ]
    for champion, challenger in cases:
        result = compare(champion, challenger)
        values = (
            result.p_better,
            result.p_worse,
            result.uplift,
            result.uplift_low,
            result.uplift_high,
        )
        assert all(math.isfinite(v) for v in values), result
        assert 0.0 <= result.p_worse <= 1.0 and 0.0 <= result.p_better <= 1.0


@pytest.mark.parametrize(
    "challenger_ahead",
    [pytest.param(True, id="tiny-p-worse"), pytest.param(False, id="tiny-p-better")],
)
def test_compare_computes_tiny_tail_directly(challenger_ahead: bool) -> None:
    # 1% apart at 1e8 impressions each: the smaller tail is ~4e-24; as 1 - (other tail) it
    # would be exactly 0.
    low, high = BetaArm(10**8, 2_000_000), BetaArm(10**8, 2_020_000)
    result = compare(low, high) if challenger_ahead else compare(high, low)
    big, tiny = (
        (result.p_better, result.p_worse) if challenger_ahead else (result.p_worse, result.p_better)
    )
    assert big == 1.0
    # Delta method: var log(p_hat) = (1 - p) / clicks.
    tail = stats.norm.sf(math.log(1.01) / math.sqrt(0.98 / 2_000_000 + 0.9798 / 2_020_000))
    assert 0.5 * tail < tiny < 2 * tail


def test_compare_exact_path_at_1e8_matches_normal_path() -> None:
    # Smallest parameter ~1000 with b ~ 1e8: the exact sum's log-space term 0 must not lose
    # precision; the normal path (error ~1e-4 at a = 1000) is an independent check.
    a1, b1 = BetaArm(10**8, 1_000).posterior()
    a2, b2 = BetaArm(10**8, 1_080).posterior()
    exact = beta_compare_kernel(a1, b1, a2, b2, float(EXACT_CUTOFF))
    normal = beta_compare_kernel(a1, b1, a2, b2, 0.0)
    assert exact[2] == 1
    assert exact[0] == pytest.approx(normal[0], abs=2e-4)
    assert 0.9 < exact[0] < 0.999


@pytest.mark.parametrize(
    ("champion", "challenger", "reason", "method"),
    [
        pytest.param(
            BetaArm(0, 0), BetaArm(1_000, 20), "no_impressions", "none", id="no-impr-champ"
        ),
        pytest.param(
            BetaArm(1_000, 20), BetaArm(0, 0), "no_impressions", "none", id="no-impr-chall"
        ),
        pytest.param(BetaArm(1_000, 0), BetaArm(1_000, 0), "no_clicks", "exact", id="no-clicks"),
        pytest.param(
            BetaArm(1_000, 5), BetaArm(1_000, 0), "no_clicks", "exact", id="chall-no-clicks"
        ),
        pytest.param(BetaArm(30, 30), BetaArm(30, 29), "all_clicked", "exact", id="all-clicked"),
        pytest.param(
            BetaArm(10, 11), BetaArm(10, 1), "invalid_counts", "none", id="clicks-gt-impr"
        ),
        pytest.param(BetaArm(-5, 0), BetaArm(10, 1), "invalid_counts", "none", id="negative"),
    ],
)
def test_compare_degenerate_inputs_give_reason(
    champion: BetaArm, challenger: BetaArm, reason: str, method: str
) -> None:
    result = compare(champion, challenger)
    assert (result.reason, result.method) == (reason, method)
    values = (result.p_better, result.p_worse, result.uplift, result.uplift_low, result.uplift_high)
    assert all(math.isfinite(v) for v in values)
    assert result.p_better + result.p_worse == pytest.approx(1.0)
    if method == "none":
        assert (result.p_better, result.uplift) == (0.5, 0.0)


def test_compare_ordinary_input_has_no_reason() -> None:
    assert compare(BetaArm(10_000, 200), BetaArm(10_000, 210)).reason == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"prior": (0.0, 1.0)}, id="zero-prior"),
        pytest.param({"ci": 1.0}, id="ci-one"),
    ],
)
def test_compare_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        compare(BetaArm(10, 1), BetaArm(10, 1), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("p_worse", "fires"),
    [pytest.param(0.95, True, id="above"), pytest.param(0.9, False, id="at-threshold")],
)
def test_literal_worse_fires_above_threshold(p_worse: float, fires: bool) -> None:
    comparison = Comparison(1 - p_worse, p_worse, 0.0, 0.0, 0.0, "normal")
    assert literal_worse(comparison) is fires
