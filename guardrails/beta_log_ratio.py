"""log(X2 / X1) for independent X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2): its exact cumulants
(digamma, trigamma, tetragamma) and the skewness-corrected normal approximation of its CDF.

`guardrails.beta_comparison` uses it above the exact sum's cut-off and for the uplift interval,
`guardrails.segment_degradation` for P(p_c/p_b < 1 - threshold) per segment value, and
`bench/policy_kernel.py` calls `log_ratio_cdf` as the scalar kernel of segment degradation.
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
