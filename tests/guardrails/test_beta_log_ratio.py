"""log(X2/X1) for two Betas (guardrails/beta_log_ratio.py): its cumulants against scipy's
polygamma, its skewness-corrected normal CDF against quadrature, the third-order tails against
quadrature (their 1e-6 contract against the exact sum is in test_beta_comparison.py)."""

from __future__ import annotations

import math

import pytest
from scipy import integrate, special, stats

from guardrails.beta_log_ratio import (
    _polygamma_3_4,
    log_ratio_cdf,
    log_ratio_cumulants,
    log_ratio_tails,
)


def _log_beta_cumulant(order: int, a: float, b: float) -> float:
    """Cumulant order + 1 of log X, X ~ Beta(a, b): polygamma(order, a) - polygamma(order, a+b)."""
    return float(special.polygamma(order, a) - special.polygamma(order, a + b))


@pytest.mark.parametrize(
    ("a1", "b1", "a2", "b2"),
    [
        pytest.param(1.5, 2.5, 0.7, 4.2, id="below-the-series"),
        pytest.param(3.0, 10.0, 5.0, 8.0, id="tiny"),
        pytest.param(2001.0, 1e5, 2100.0, 1e5, id="above-cutoff"),
        pytest.param(2e6, 1e8, 2.02e6, 1e8, id="1e8-impressions"),
    ],
)
def test_log_ratio_cumulants_match_polygamma(a1: float, b1: float, a2: float, b2: float) -> None:
    mean = _log_beta_cumulant(0, a2, b2) - _log_beta_cumulant(0, a1, b1)
    var = _log_beta_cumulant(1, a1, b1) + _log_beta_cumulant(1, a2, b2)
    third = _log_beta_cumulant(2, a2, b2) - _log_beta_cumulant(2, a1, b1)
    # The asymptotic series from x = 10 on agree with scipy to ~1e-13 relative.
    assert log_ratio_cumulants(a1, b1, a2, b2) == pytest.approx(
        (mean, math.sqrt(var), third / var**1.5), rel=1e-12, abs=1e-15
    )


@pytest.mark.parametrize(
    ("a1", "b1", "a2", "b2", "x"),
    [
        pytest.param(2001.0, 1e5, 2001.0, 1e5, 0.0, id="equal-median"),
        pytest.param(2001.0, 1e5, 2100.0, 1e5, math.log1p(-0.05), id="far-tail"),
        pytest.param(2001.0, 1e5, 2100.0, 1e5, 0.05, id="near-mean"),
        pytest.param(401.0, 19_601.0, 371.0, 19_631.0, math.log1p(-0.05), id="400-clicks"),
    ],
)
def test_log_ratio_cdf_matches_quadrature(
    a1: float, b1: float, a2: float, b2: float, x: float
) -> None:
    # P(X2 < e^x X1) = integral of f1(t) F2(e^x t) dt, around X1's mass.
    mean = a1 / (a1 + b1)
    sd = math.sqrt(a1 * b1 / ((a1 + b1) ** 2 * (a1 + b1 + 1)))
    reference, _ = integrate.quad(
        lambda t: stats.beta.pdf(t, a1, b1) * stats.beta.cdf(t * math.exp(x), a2, b2),
        max(0.0, mean - 40 * sd),
        min(1.0, mean + 40 * sd),
        points=[mean],
        epsabs=1e-13,
        epsrel=1e-11,
        limit=500,
    )
    below, above = log_ratio_cdf(a1, b1, a2, b2, x)
    # What the skewness correction leaves is O(1/a): measured at most 0.09/a.
    assert below == pytest.approx(reference, abs=0.1 / min(a1, a2))
    assert below + above == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(0.7, id="recurrence"),
        pytest.param(10.0, id="series-start"),
        pytest.param(2001.0, id="cutoff"),
        pytest.param(1e8, id="1e8"),
    ],
)
def test_polygamma_3_4_matches_scipy(x: float) -> None:
    third, fourth = _polygamma_3_4(x)
    assert third == pytest.approx(float(special.polygamma(3, x)), rel=1e-10)
    assert fourth == pytest.approx(float(special.polygamma(4, x)), rel=1e-9)


@pytest.mark.parametrize(
    ("a1", "b1", "a2", "b2"),
    [
        pytest.param(2001.0, 1e5, 2001.0, 1e5, id="equal"),
        pytest.param(2001.0, 1e5, 2100.0, 1e5, id="z-1.5"),
        pytest.param(1101.0, 2e4, 1001.0, 2e4, id="z-minus-2"),
    ],
)
def test_log_ratio_tails_match_quadrature(a1: float, b1: float, a2: float, b2: float) -> None:
    mean = a1 / (a1 + b1)
    sd = math.sqrt(a1 * b1 / ((a1 + b1) ** 2 * (a1 + b1 + 1)))
    greater, _ = integrate.quad(
        lambda t: stats.beta.pdf(t, a1, b1) * stats.beta.sf(t, a2, b2),
        max(0.0, mean - 40 * sd),
        min(1.0, mean + 40 * sd),
        points=[mean],
        epsabs=1e-13,
        epsrel=1e-11,
        limit=500,
    )
    less, more = log_ratio_tails(a1, b1, a2, b2)
    assert more == pytest.approx(greater, abs=1e-7)
    assert less + more == pytest.approx(1.0, abs=1e-12)
