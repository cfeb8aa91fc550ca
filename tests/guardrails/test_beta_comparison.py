"""Bayesian A/B on CTR (guardrails/beta_comparison.py): BetaArm, the exact kernel against its
reference and quadrature, the expansion above the cut-off against an exact log-space sum (mpmath
log-gamma terms), compare against Monte Carlo and gbstats, literal_worse."""

from __future__ import annotations

import math

import mpmath
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


def _p_greater_exact(
    a_a: float, b_a: float, a_b: float, b_b: float, anchor_every: int = 4096
) -> float:
    """P(X_B > X_A), X_A ~ Beta(a_a, b_a), X_B ~ Beta(a_b, b_b), whole a_b: the closed-form sum
    sum_{i<a_b} B(a_a+i, b_a+b_b) / ((b_b+i) B(1+i, b_b) B(a_a, b_a)) in log space.

    Every `anchor_every`-th term's log is taken from mpmath's loggamma at 40 digits; the logs of
    the terms between add the log term ratios (a_a+i)(b_b+i)/((a_a+b_a+b_b+i)(1+i)) to their anchor
    (float64: drifts ~1e-12 relative over a chunk). The production sum instead runs one product from
    term 0, whose log-gamma differences near 1e8 round to ~1e-8.
    """

    def log_term(i: int) -> float:
        def lbeta(x: object, y: object) -> object:
            return mpmath.loggamma(x) + mpmath.loggamma(y) - mpmath.loggamma(x + y)

        with mpmath.workdps(40):
            value = lbeta(a_a + i, b_a + b_b) - mpmath.log(b_b + i) - lbeta(1 + i, b_b)
            return float(value - lbeta(a_a, b_a))

    n = int(a_b)
    s = a_a + b_a + b_b
    chunks = []
    for start in range(0, n, anchor_every):
        i = np.arange(start, min(start + anchor_every, n) - 1, dtype=np.float64)
        steps = np.log((a_a + i) * (b_b + i) / ((s + i) * (1.0 + i)))
        chunks.append(log_term(start) + np.concatenate(([0.0], np.cumsum(steps))))
    logs = np.concatenate(chunks)
    top = float(logs.max())
    return math.exp(top) * math.fsum(np.exp(logs - top))


def _exact_tail(a1: float, b1: float, a2: float, b2: float) -> tuple[float, bool]:
    """One tail of X2 vs X1, summed directly by `_p_greater_exact` over the smallest parameter,
    and whether that tail is P(X2 > X1) (else it is P(X2 < X1))."""
    form = int(np.argmin([a2, a1, b1, b2]))
    if form == 0:
        return _p_greater_exact(a1, b1, a2, b2), True
    if form == 1:
        return _p_greater_exact(a2, b2, a1, b1), False
    if form == 2:
        return _p_greater_exact(b2, a2, b1, a1), True  # P(1 - X1 > 1 - X2)
    return _p_greater_exact(b1, a1, b2, a2), False


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
        pytest.param(950.0, 5e4, 990.0, 5e4, id="near-cutoff"),
        # The terms peak early and the sum stops past the mode (before they reach subnormals).
        pytest.param(20_001.0, 980_001.0, 998.0, 49_005.0, id="stops-past-the-mode"),
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


def _posteriors(champion: BetaArm, challenger: BetaArm) -> tuple[float, float, float, float]:
    a1, b1 = champion.posterior()
    a2, b2 = challenger.posterior()
    return a1, b1, a2, b2


def test_p_greater_exact_reference_matches_per_term_mpmath() -> None:
    # The anchored reference against every term's log taken from mpmath (no ratios at all).
    args = _posteriors(BetaArm(100_000, 2_000), BetaArm(100_000, 2_050))
    assert _p_greater_exact(*args) == pytest.approx(
        _p_greater_exact(*args, anchor_every=1), abs=1e-11
    )


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param(BetaArm(100_000, 2_000), BetaArm(100_000, 2_050), id="2000-vs-2050-of-100k"),
        pytest.param(BetaArm(50_000, 1_000), BetaArm(50_000, 1_030), id="just-above-cutoff"),
        pytest.param(BetaArm(50_000, 1_130), BetaArm(50_000, 1_001), id="cutoff-z-minus-3"),
        pytest.param(BetaArm(1_000_000, 20_000), BetaArm(50_000, 1_010), id="arms-20-to-1"),
        pytest.param(BetaArm(4_000, 2_999), BetaArm(4_000, 2_950), id="ctr-75pct-b-smallest"),
        pytest.param(BetaArm(501_000, 500_000), BetaArm(501_000, 499_950), id="ctr-99.8pct"),
        pytest.param(BetaArm(10**6, 2_000), BetaArm(10**6, 2_200), id="ctr-0.2pct-z-3"),
        pytest.param(BetaArm(10**8, 200_000), BetaArm(10**8, 200_300), id="1e8-ctr-0.2pct"),
        pytest.param(BetaArm(10**8, 2_000_000), BetaArm(10**8, 2_000_500), id="1e8-ctr-2pct"),
        pytest.param(BetaArm(10**8, 2_000_000), BetaArm(10**7, 200_700), id="1e8-vs-1e7"),
        pytest.param(BetaArm(10**7, 5 * 10**6), BetaArm(10**7, 5 * 10**6 + 1_000), id="1e7-50pct"),
    ],
)
def test_beta_compare_kernel_within_1e6_of_exact_sum_above_cutoff(
    champion: BetaArm, challenger: BetaArm
) -> None:
    a1, b1, a2, b2 = _posteriors(champion, challenger)
    assert min(a1, b1, a2, b2) > EXACT_CUTOFF
    p_better, p_worse, exact = beta_compare_kernel(a1, b1, a2, b2, float(EXACT_CUTOFF))
    tail, is_better = _exact_tail(a1, b1, a2, b2)
    assert exact == 0
    # The contract is 1e-6; the third-order expansion measured <= 1.5e-7 just above the cut-off
    # (a skewness-corrected normal alone was 1.2e-5 off at 2,000 vs 2,050 clicks).
    assert (p_better if is_better else p_worse) == pytest.approx(tail, abs=1e-6)
    assert p_better + p_worse == pytest.approx(1.0, abs=1e-12)


def test_beta_compare_kernel_expansion_error_shrinks_as_one_over_a_squared() -> None:
    # Same CTRs and z, smallest parameter 250 -> 1000 -> 4000: a third-order series' error falls
    # ~16x per 4x; a second-order one only ~8x, a first-order one 4x.
    errors = []
    for clicks in (250, 1_000, 4_000):
        a1, b1, a2, b2 = _posteriors(
            BetaArm(clicks * 50, clicks), BetaArm(clicks * 50, round(clicks * 1.04))
        )
        tail, is_better = _exact_tail(a1, b1, a2, b2)
        p_better, p_worse, _ = beta_compare_kernel(a1, b1, a2, b2, 0.0)
        errors.append(abs((p_better if is_better else p_worse) - tail))
    assert errors[0] > 1e-8  # the error is measurable, not lost in rounding
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10


@pytest.mark.parametrize(
    ("champion", "challenger"),
    [
        pytest.param(BetaArm(100_000, 2_000), BetaArm(100_000, 2_050), id="2000-vs-2050"),
        pytest.param(BetaArm(400_000, 4_800), BetaArm(100_000, 1_250), id="unequal-arms"),
    ],
)
def test_compare_expansion_path_matches_monte_carlo(champion: BetaArm, challenger: BetaArm) -> None:
    rng = np.random.default_rng(5)
    mc = float(np.mean(_beta_draws(challenger, rng) > _beta_draws(champion, rng)))
    result = compare(champion, challenger)
    assert result.method == "normal"
    assert result.p_better == pytest.approx(mc, abs=5 * math.sqrt(mc * (1 - mc) / MC_DRAWS))


def test_compare_switches_to_expansion_above_cutoff() -> None:
    # With the Beta(1, 1) prior the smallest parameter is clicks + 1.
    challenger = BetaArm(10**6, EXACT_CUTOFF + 50)
    at = compare(BetaArm(10**6, EXACT_CUTOFF - 1), challenger)
    above = compare(BetaArm(10**6, EXACT_CUTOFF), challenger)
    assert (at.method, above.method) == ("exact", "normal")
    a1, b1, a2, b2 = _posteriors(BetaArm(10**6, EXACT_CUTOFF), challenger)
    assert above.p_better == pytest.approx(beta_compare_kernel(a1, b1, a2, b2, 1e12)[0], abs=1e-6)


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


def test_compare_exact_path_at_1e8_matches_exact_reference() -> None:
    # Smallest parameter ~900 with b ~ 1e8: the exact sum's log-space term 0 must not lose
    # precision (its log-gamma differences round to ~1e-8 there).
    a1, b1, a2, b2 = _posteriors(BetaArm(10**8, 900), BetaArm(10**8, 980))
    p_better, p_worse, exact = beta_compare_kernel(a1, b1, a2, b2, float(EXACT_CUTOFF))
    tail, is_better = _exact_tail(a1, b1, a2, b2)
    assert exact == 1
    assert (p_better if is_better else p_worse) == pytest.approx(tail, abs=1e-7)
    assert 0.9 < p_better < 0.999


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
