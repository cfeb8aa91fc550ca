"""log(X2 / X1) for independent X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2): its exact cumulants
(digamma up to the fourth polygamma), the skewness-corrected normal approximation of its CDF, and
a third-order normalizing expansion of its two tails at 0.

`guardrails.beta_comparison` uses `log_ratio_tails` for P(better) above the exact sum's cut-off
and the cumulants for the uplift interval; `guardrails.segment_degradation` uses `log_ratio_cdf`
for P(p_c/p_b < 1 - threshold) per segment value, and `bench/policy_kernel.py` calls it as the
scalar kernel of segment degradation.
"""

from __future__ import annotations

import math

from numba import njit

# --- special functions (scalar, numba) ----------------------------------------------------------


@njit(cache=True)
def _digamma(x: float) -> float:
    r = 0.0
    while x < 10.0:
        r -= 1.0 / x
        x += 1.0
    x2 = 1.0 / (x * x)
    series = x2 * (1 / 12 - x2 * (1 / 120 - x2 * (1 / 252 - x2 * (1 / 240 - x2 / 132))))
    return r + math.log(x) - 0.5 / x - series


@njit(cache=True)
def _trigamma(x: float) -> float:
    r = 0.0
    while x < 10.0:
        r += 1.0 / (x * x)
        x += 1.0
    x2 = 1.0 / (x * x)
    series = 1 / 6 - x2 * (1 / 30 - x2 * (1 / 42 - x2 * (1 / 30 - x2 * 5 / 66)))
    return r + 1.0 / x + 0.5 * x2 + x2 / x * series


@njit(cache=True)
def _tetragamma(x: float) -> float:
    r = 0.0
    while x < 10.0:
        r -= 2.0 / (x * x * x)
        x += 1.0
    x2 = 1.0 / (x * x)
    series = 0.5 - x2 * (1 / 6 - x2 * (1 / 6 - x2 * (3 / 10 - x2 * 5 / 6)))
    return r - x2 - x2 / x - x2 * x2 * series


@njit(cache=True)
def _polygamma_3_4(x: float) -> tuple[float, float]:
    """The third and fourth polygamma functions at x: the recurrence up to x >= 10, then the
    asymptotic series psi^(n)(x) ~ (-1)^(n+1) [(n-1)!/x^n + n!/(2 x^(n+1))
    + sum_k B_2k (2k+n-1)! / ((2k)! x^(2k+n))], five Bernoulli terms (1e-10 relative at x = 10,
    1e-16 from 50 on)."""
    r3 = 0.0
    r4 = 0.0
    while x < 10.0:
        x4 = x * x * x * x
        r3 += 6.0 / x4
        r4 -= 24.0 / (x4 * x)
        x += 1.0
    c = 1.0 / x
    c2 = c * c
    s3 = 2.0 + c * (3.0 + c * (2.0 - c2 * (1.0 - c2 * (4 / 3 - c2 * (3.0 - c2 * 10.0)))))
    s4 = 6.0 + c * (12.0 + c * (10.0 - c2 * (7.0 - c2 * (12.0 - c2 * (33.0 - c2 * 130.0)))))
    return r3 + c2 * c * s3, r4 - c2 * c2 * s4


@njit(cache=True)
def _norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


# --- the log ratio ------------------------------------------------------------------------------


@njit(cache=True)
def _log_beta_cumulants(a: float, b: float) -> tuple[float, float, float]:
    """Mean, variance and third cumulant of log X, X ~ Beta(a, b)."""
    return (
        _digamma(a) - _digamma(a + b),
        _trigamma(a) - _trigamma(a + b),
        _tetragamma(a) - _tetragamma(a + b),
    )


@njit(cache=True)
def log_ratio_cumulants(a1: float, b1: float, a2: float, b2: float) -> tuple[float, float, float]:
    """Mean, sd and standardized skewness of log(X2 / X1)."""
    m1, v1, k1 = _log_beta_cumulants(a1, b1)
    m2, v2, k2 = _log_beta_cumulants(a2, b2)
    var = v1 + v2
    sd = math.sqrt(var)
    return m2 - m1, sd, (k2 - k1) / (var * sd)


@njit(cache=True)
def log_ratio_cdf(a1: float, b1: float, a2: float, b2: float, x: float) -> tuple[float, float]:
    """(P(log(X2/X1) < x), P(log(X2/X1) > x)), both tails computed directly (erfc, no 1 - p).

    Normal with exact mean and variance, corrected for skewness g by Cornish-Fisher:
    P(L <= m + sd z) ~ Phi(z - g/6 (z^2 - 1)). z^2 is capped at 64 so the map stays monotone; beyond
    |z| = 8 both tails are below 1e-15 anyway.
    """
    mean, sd, skew = log_ratio_cumulants(a1, b1, a2, b2)
    z = (x - mean) / sd
    w = z - skew / 6.0 * (min(z * z, 64.0) - 1.0)
    return _norm_cdf(w), _norm_cdf(-w)


@njit(cache=True)
def log_ratio_tails(a1: float, b1: float, a2: float, b2: float) -> tuple[float, float]:
    """(P(X2 < X1), P(X2 > X1)) to third order in 1/sqrt(smallest parameter), both tails direct.

    With z = -mean/sd of L = log(X2/X1) and its standardized cumulants l3, l4, l5, the Edgeworth
    series F(z) = Phi(z) - phi(z)(p1 + p2 + p3), with p1 = l3/6 He2, p2 = l4/24 He3 + l3^2/72 He5,
    p3 = l5/120 He4 + l3 l4/144 He6 + l3^3/1296 He8, is inverted into a normalizing transform
    w = z + d(z) with F(z) = Phi(w) + O(a^-2): the tails Phi(w) and Phi(-w) are both positive and
    neither is 1 - the other. d is taken at z clamped to +-8, so w stays increasing in z; beyond
    that both tails are below 1e-14 anyway.
    """
    m1, v1, k1 = _log_beta_cumulants(a1, b1)
    m2, v2, k2 = _log_beta_cumulants(a2, b2)
    q1a, r1a = _polygamma_3_4(a1)
    q1s, r1s = _polygamma_3_4(a1 + b1)
    q2a, r2a = _polygamma_3_4(a2)
    q2s, r2s = _polygamma_3_4(a2 + b2)
    var = v1 + v2
    sd = math.sqrt(var)
    l3 = (k2 - k1) / (var * sd)
    l4 = (q2a - q2s + q1a - q1s) / (var * var)
    l5 = (r2a - r2s - r1a + r1s) / (var * var * sd)
    z = (m1 - m2) / sd
    y = min(max(z, -8.0), 8.0)
    y2 = y * y
    # Probabilists' Hermite polynomials He2 .. He8 at y.
    he2 = y2 - 1.0
    he3 = y * (y2 - 3.0)
    he4 = y2 * (y2 - 6.0) + 3.0
    he5 = y * (y2 * (y2 - 10.0) + 15.0)
    he6 = y2 * (y2 * (y2 - 15.0) + 45.0) - 15.0
    he8 = y2 * (y2 * (y2 * (y2 - 28.0) + 210.0) - 420.0) + 105.0
    p1 = l3 / 6.0 * he2
    p2 = l4 / 24.0 * he3 + l3 * l3 / 72.0 * he5
    p3 = l5 / 120.0 * he4 + l3 * l4 / 144.0 * he6 + l3 * l3 * l3 / 1296.0 * he8
    # Phi(z + d) = Phi(z) + phi(z) (d - z d^2/2 + (z^2 - 1) d^3/6 + ...) = F(z), order by order.
    cube = p1 * p1 * p1
    d = -p1 - p2 - p3 + y * p1 * p1 / 2.0 + y * p1 * p2 - y2 * cube / 2.0 + (y2 - 1.0) * cube / 6.0
    w = z + d
    return _norm_cdf(w), _norm_cdf(-w)
