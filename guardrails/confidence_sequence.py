"""The always-valid sequential bound used for continuous early rollback: the Waudby-Smith
asymptotic confidence sequence on d = p_c - p_b, one-sided.

    sequential_difference(champion, ch)  the bounds, checked at every look
    sequential_bound_kernel(...)         (d_hat, half-width) (scalar, numba)
    sequential_rho(alpha, n_star)        the mixing parameter, tightest at n_star impressions
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from numba import njit

from guardrails.beta_comparison import BetaArm, invalid_counts

# N* of the sequential test, in total impressions of both arms: where the bound is tightest.
# From bench/peeking_sim.py (phase 3: 250 impressions/s, 20% challenger, CTR 2%, a look a minute):
# 4M impressions (~4.4 h) is where a -2% regression becomes detectable; there -2% is caught in a
# median 4.8 h and -5% in 1.1 h, with 3% false rollbacks of an equal challenger over 3 days. N* at
# the whole 3-day sample (65M) gives 2.8% false rollbacks but 9.3 h and 3.0 h.
DEFAULT_N_STAR = 4_000_000.0


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """Always-valid bounds on d = p_c - p_b. Each of lower and upper is a one-sided (1 - alpha)
    bound holding at every look simultaneously; upper < 0 means the challenger is surely worse."""

    estimate: float
    lower: float
    upper: float
    half_width: float
    impressions: int
    alpha: float
    n_star: float
    reason: str = ""

    @property
    def challenger_worse(self) -> bool:
        return self.upper < 0.0


def sequential_rho(alpha: float, n_star: float) -> float:
    """Mixing parameter of the one-sided normal mixture, tightest at n_star total impressions.

    Waudby-Smith et al. (arXiv:2103.06476v7, eq. 161, as in gbstats) take
    rho^2 = (-2 ln a + ln(1 - 2 ln a)) / N*, which about minimizes the two-sided width at N = N*.
    The one-sided boundary has log(1 + sqrt(N rho^2 + 1) / (2 alpha)) where the two-sided one has
    log(sqrt(N rho^2 + 1) / a), so the same choice with a = 2 alpha is used here (its width at N*
    is within 0.03% of the numerical optimum at alpha = 0.05).
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if not n_star > 0:
        raise ValueError(f"n_star must be positive, got {n_star!r}")
    la = -2.0 * math.log(2.0 * alpha)
    return math.sqrt((la + math.log(la + 1.0)) / n_star)


@njit(cache=True)
def sequential_bound_kernel(
    n1: float, c1: float, n2: float, c2: float, alpha: float, rho: float
) -> tuple[float, float]:
    """(d_hat, half-width) of the one-sided asymptotic confidence sequence for d = p2 - p1.

        half-width = sigma_hat * sqrt(2 (N r + 1) / (N r) * log(1 + sqrt(N r + 1) / (2 alpha)))

    with r = rho^2, sigma_hat^2 = var(p1_hat) + var(p2_hat) and N = n1 + n2 (gbstats' two-sample
    form: per-unit variance s^2 = N sigma_hat^2 in the paper's sqrt(s^2) * boundary / N). The
    variance uses (c + 1/2)/(n + 1) so that zero-click arms do not give a zero-width bound.
    """
    p1 = (c1 + 0.5) / (n1 + 1.0)
    p2 = (c2 + 0.5) / (n2 + 1.0)
    var = p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2
    nr2 = (n1 + n2) * rho * rho
    mult = 2.0 * (nr2 + 1.0) / nr2 * math.log(1.0 + math.sqrt(nr2 + 1.0) / (2.0 * alpha))
    return c2 / n2 - c1 / n1, math.sqrt(var * mult)


def sequential_difference(
    champion: BetaArm,
    challenger: BetaArm,
    *,
    alpha: float = 0.05,
    n_star: float = DEFAULT_N_STAR,
) -> SequentialResult:
    """Always-valid one-sided bounds on d = p_c - p_b for continuous early rollback.

    Method: the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
    "Time-uniform central limit theory and asymptotic confidence sequences" (arXiv:2103.06476),
    which GrowthBook's gbstats uses for sequential testing (two-sided there: eq. 9 width, eq. 161
    rho). Here one-sided, with the one-sided normal-mixture boundary (Howard et al. 2021):
    log(1 + sqrt(N rho^2 + 1) / (2 alpha)) in place of log(sqrt(N rho^2 + 1) / alpha).
    Tuning parameter N* (`n_star`, total impressions of both arms): the sequence is tightest
    there; rho = sequential_rho(alpha, n_star). Any N* is valid; it only moves where power goes.
    Rolling back when upper < 0 at any look errs with probability <= alpha over the whole,
    unbounded sequence of looks (asymptotically, i.e. once the CLT holds for the counts).

    Degenerate input (no impressions, invalid counts) gives the trivial bound [-1, 1] and a reason.
    """
    rho = sequential_rho(alpha, n_star)
    n = champion.impressions + challenger.impressions
    if invalid_counts(champion) or invalid_counts(challenger):
        return SequentialResult(0.0, -1.0, 1.0, 1.0, n, alpha, n_star, "invalid_counts")
    if champion.impressions == 0 or challenger.impressions == 0:
        return SequentialResult(0.0, -1.0, 1.0, 1.0, n, alpha, n_star, "no_impressions")
    d, hw = sequential_bound_kernel(
        float(champion.impressions),
        float(champion.clicks),
        float(challenger.impressions),
        float(challenger.clicks),
        alpha,
        rho,
    )
    return SequentialResult(d, max(d - hw, -1.0), min(d + hw, 1.0), hw, n, alpha, n_star)
