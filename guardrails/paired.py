"""The paired guardrails: the challenger against the champion on the same rows.

On challenger requests the champion also scores the rows (router.paired); the workers sum
n, sum b, sum c, sum b^2, sum c^2 and sum b*c over those pairs (b the champion's prediction,
c the challenger's). Three statistics of the same sums, each with an interval:

    paired_spread       sd(c) / sd(b): a constant or collapsed challenger. Interval of the
                        variance ratio of correlated samples (Pitman-Morgan): a challenger
                        that never moves where the champion does is at 0 with certainty, so
                        it fails from the first requests with distinct rows.
    paired_correlation  Pearson r(b, c), Fisher-z interval: a feature-order bug.
    paired_mean_ratio   mean(c) / mean(b), delta-method interval: a scaling bug.

Each fails when its whole interval is past the line (and MIN_INTERVAL_ROWS pairs exist),
passes with `min_paired_rows` pairs on the right side, and waits otherwise. The intervals
are per look, at the guardrails' confidence, like calibration's: a healthy challenger sits
far from every line (r near 1 against 0.5), where looking every second does not fire. They
take rows as independent; rows of one request are often alike, so a few large batches make
the intervals narrower than they are (the minimum is in rows, of distinct requests ideally).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from guardrails.evidence import Evidence, Result
from guardrails.policy import Policy, State
from guardrails.safety import two_sided_z

# Below this many pairs no interval is trusted to fail on, however far out it looks.
MIN_INTERVAL_ROWS = 10.0
# A variance this small relative to the mean square is rounding in the sums, not spread.
_FLAT = 1e-9
_EDGE = 1.0 - 1e-12  # |r| is kept below 1 for atanh

PairedStats = tuple[float, float, float, float, float, float, float, float, float, float, float]
NAN = math.nan


@njit(cache=True)
def t_quantile(z: float, dof: float) -> float:
    """Student's t quantile at the normal quantile z (Cornish-Fisher, Abramowitz & Stegun
    26.7.5): 0.4% high at 8 degrees of freedom for z = 3.29, closer above."""
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


@njit(cache=True)
def paired_kernel(sums: npt.NDArray[np.float64], z: float) -> PairedStats:
    """(n, spread, low, high, r, low, high, mean ratio, low, high, champion sd) of the paired
    sums at two-sided normal quantile z; NaN where a statistic is undefined (too few pairs,
    a side that does not vary, a champion mean of 0)."""
    n = sums[0]
    if n < 4:
        return n, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN
    mb = sums[1] / n
    mc = sums[2] / n
    qb = sums[3] / n
    qc = sums[4] / n
    vb = qb - mb * mb
    vc = qc - mc * mc
    vb = vb if vb > _FLAT * qb else 0.0
    vc = vc if vc > _FLAT * qc else 0.0
    cov = sums[5] / n - mb * mc
    t = t_quantile(z, n - 2.0)
    spread = spread_low = spread_high = NAN
    r = r_low = r_high = NAN
    if vb > 0.0:
        f = vc / vb
        rr = 0.0
        if vc > 0.0:
            rr = min(max(cov / math.sqrt(vb * vc), -_EDGE), _EDGE)
            r = rr
            w = z / math.sqrt(n - 3.0)
            r_low = math.tanh(math.atanh(rr) - w)
            r_high = math.tanh(math.atanh(rr) + w)
        k = 1.0 + 2.0 * (1.0 - rr * rr) * t * t / (n - 2.0)
        root = math.sqrt(k * k - 1.0)
        spread = math.sqrt(f)
        spread_low = math.sqrt(f * (k - root))
        spread_high = math.sqrt(f * (k + root))
    ratio = ratio_low = ratio_high = NAN
    if mb > 0.0:
        ratio = mc / mb
        var = max(vc - 2.0 * ratio * cov + ratio * ratio * vb, 0.0) / (n * mb * mb)
        half = t * math.sqrt(var)
        ratio_low = ratio - half
        ratio_high = ratio + half
    return (
        n, spread, spread_low, spread_high, r, r_low, r_high, ratio, ratio_low, ratio_high,
        math.sqrt(vb),
    )  # fmt: skip


def paired_reference(
    champion: npt.NDArray[np.float64], challenger: npt.NDArray[np.float64], z: float
) -> PairedStats:
    """What `paired_kernel` gives on the sums of these pairs, from the pairs themselves."""
    b = np.asarray(champion, np.float64)
    c = np.asarray(challenger, np.float64)
    n = float(b.size)
    if n < 4:
        return n, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN
    vb, vc = float(b.var()), float(c.var())
    vb = vb if vb > _FLAT * float(np.mean(b * b)) else 0.0
    vc = vc if vc > _FLAT * float(np.mean(c * c)) else 0.0
    t = float(t_quantile(z, n - 2.0))
    spread = spread_low = spread_high = r = r_low = r_high = NAN
    if vb > 0:
        rr = 0.0
        if vc > 0:
            rr = float(np.clip(np.corrcoef(b, c)[0, 1], -_EDGE, _EDGE))
            r = rr
            r_low, r_high = np.tanh(np.arctanh(rr) + np.array([-z, z]) / np.sqrt(n - 3.0))
        # Pitman-Morgan: (F - theta)^2 (n - 2) = 4 F theta (1 - r^2) t^2, solved for theta.
        f = vc / vb
        lo, hi = np.sort(np.roots([1.0, -2.0 * f * (1 + 2 * (1 - rr**2) * t**2 / (n - 2)), f * f]))
        spread, spread_low, spread_high = math.sqrt(f), math.sqrt(max(lo, 0)), math.sqrt(hi)
    ratio = ratio_low = ratio_high = NAN
    if b.mean() > 0:
        ratio = float(c.mean() / b.mean())
        # Delta method: the ratio's error is the mean of (c - ratio * b) over mean(b).
        half = t * float(np.std(c - ratio * b)) / (math.sqrt(n) * float(b.mean()))
        ratio_low, ratio_high = ratio - half, ratio + half
    return (
        n, spread, spread_low, spread_high, float(r), float(r_low), float(r_high), ratio,
        ratio_low, ratio_high, math.sqrt(vb),
    )  # fmt: skip


def _stats(p: Policy, e: Evidence) -> PairedStats:
    return paired_kernel(e.challenger.paired, two_sided_z(p.guards.confidence))


def _judge(
    p: Policy, name: str, value: float, threshold: str, n: float, failed: bool, inside: bool,
    detail: str,
) -> Result:  # fmt: skip
    state = State.WAITING
    if n >= MIN_INTERVAL_ROWS and failed:
        state = State.FAIL
    elif n >= p.guards.min_paired_rows and inside:
        state = State.PASS
    return Result(name, value, threshold, state, 1, detail)


def _rows(e: Evidence, n: float) -> str:
    arm = e.challenger
    return f"{n:.0f} rows of {arm.paired_requests} paired requests ({arm.pairs_dropped} dropped)"


def paired_spread(p: Policy, e: Evidence) -> Result:
    """A constant or collapsed challenger: sd of its predictions / the champion's on the
    same rows."""
    line = p.guards.min_paired_spread
    n, spread, low, high, *_rest, sd_b = _stats(p, e)
    if sd_b != sd_b or sd_b == 0.0:
        detail = f"{_rows(e, n)}; the champion does not vary on them yet"
        return Result("paired_spread", NAN, f">= {line:g}", State.WAITING, 1, detail)
    detail = f"{_rows(e, n)}; interval {low:.3g}-{high:.3g}"
    return _judge(
        p, "paired_spread", spread, f">= {line:g}", n, high < line, spread >= line, detail
    )


def paired_correlation(p: Policy, e: Evidence) -> Result:
    """A feature-order bug: correlation of the two arms' predictions on the same rows."""
    line = p.guards.min_paired_correlation
    n, _, _, _, r, low, high, *_rest = _stats(p, e)
    if r != r:
        detail = f"{_rows(e, n)}; an arm does not vary on them (paired_spread judges that)"
        return Result("paired_correlation", NAN, f">= {line:g}", State.WAITING, 1, detail)
    detail = f"{_rows(e, n)}; interval {low:.3g}-{high:.3g}"
    return _judge(p, "paired_correlation", r, f">= {line:g}", n, high < line, r >= line, detail)


def paired_mean_ratio(p: Policy, e: Evidence) -> Result:
    """A scaling bug: mean challenger prediction / mean champion prediction, same rows."""
    g = p.guards
    lo, hi = g.paired_mean_low, g.paired_mean_high
    n, *_head, ratio, low, high, _ = _stats(p, e)
    threshold = f"{lo:g}-{hi:g}"
    if ratio != ratio:
        detail = f"{_rows(e, n)}; no champion mean yet"
        return Result("paired_mean_ratio", NAN, threshold, State.WAITING, 1, detail)
    detail = f"{_rows(e, n)}; interval {low:.3g}-{high:.3g}"
    out = low > hi or high < lo
    return _judge(p, "paired_mean_ratio", ratio, threshold, n, out, lo <= ratio <= hi, detail)
