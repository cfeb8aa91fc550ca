"""Guardrail metrics from the summed slabs: numba kernels over the slot tables.

`measure` turns one arm's `SlotTotals` into an `ArmMetrics`; `Evidence` pairs the
two arms of a rollout with the statistics that compare them. Each kernel here has
a NumPy reference (`*_reference`) that the tests hold it to.

Rates are judged with intervals, not point estimates, because the evaluator looks
every second: a point estimate checked continuously crosses a line on noise alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from router import hdr, layout
from router.segments import DIMENSIONS, SegmentSpace
from router.snapshot import SlotTotals

WAITING, PASS, FAIL = 0, 1, 2
# Below this many clicks the normal approximation of log(ratio) is too rough to fail a
# bucket on, however far out it looks; passing needs the configured minimum.
MIN_INTERVAL_CLICKS = 20.0
_PERCENTILES = np.array([50.0, 99.0, 99.9, 100.0])


# --- kernels ------------------------------------------------------------------------------------


@njit(cache=True)
def marginals_kernel(
    table: npt.NDArray[np.float64], codes: npt.NDArray[np.int64], n_values: int
) -> npt.NDArray[np.float64]:
    """Sum a per-cell table (cells × columns) into every dimension value at once.
    `codes[cell, d]` is the cell's value of dimension d as a row of the output."""
    out = np.zeros((n_values, table.shape[1]))
    for cell in range(table.shape[0]):
        for d in range(codes.shape[1]):
            row = codes[cell, d]
            for j in range(table.shape[1]):
                out[row, j] += table[cell, j]
    return out


def marginals_reference(
    table: npt.NDArray[np.float64], codes: npt.NDArray[np.int64], n_values: int
) -> npt.NDArray[np.float64]:
    out = np.zeros((n_values, table.shape[1]))
    for d in range(codes.shape[1]):
        np.add.at(out, codes[:, d], table)
    return out


@njit(cache=True)
def calibration_kernel(
    clicks: npt.NDArray[np.float64],
    predicted: npt.NDArray[np.float64],
    lo: float,
    hi: float,
    z: float,
    min_clicks: float,
) -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]
]:
    """Per bucket: ratio = predicted / clicks, its interval, and a state.

    Clicks are close to Poisson, so log(ratio) has sd ~ 1/sqrt(clicks): the interval is
    ratio * exp(-+z / sqrt(clicks)). FAIL when the whole interval is outside [lo, hi] (and
    there are MIN_INTERVAL_CLICKS); PASS when there are min_clicks and the ratio is inside;
    otherwise WAITING (too few clicks to judge, or outside but not yet surely so).
    """
    n = clicks.shape[0]
    ratio = np.full(n, np.nan)
    low = np.full(n, np.nan)
    high = np.full(n, np.nan)
    state = np.zeros(n, dtype=np.int64)
    for i in range(n):
        c = clicks[i]
        if c <= 0:
            continue
        r = predicted[i] / c
        spread = math.exp(z / math.sqrt(c))
        ratio[i] = r
        low[i] = r / spread
        high[i] = r * spread
        if c >= MIN_INTERVAL_CLICKS and (low[i] > hi or high[i] < lo):
            state[i] = FAIL
        elif c >= min_clicks and lo <= r <= hi:
            state[i] = PASS
    return ratio, low, high, state


def calibration_reference(
    clicks: npt.NDArray[np.float64],
    predicted: npt.NDArray[np.float64],
    lo: float,
    hi: float,
    z: float,
    min_clicks: float,
) -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]
]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(clicks > 0, predicted / clicks, np.nan)
        spread = np.where(clicks > 0, np.exp(z / np.sqrt(clicks)), np.nan)
    low, high = ratio / spread, ratio * spread
    surely_out = (clicks >= MIN_INTERVAL_CLICKS) & ((low > hi) | (high < lo))
    state = np.where(surely_out, FAIL, WAITING)
    inside = (clicks >= min_clicks) & (ratio >= lo) & (ratio <= hi)
    state = np.where(~surely_out & inside, PASS, state)
    return ratio, low, high, state.astype(np.int64)


@njit(cache=True)
def distribution_kernel(
    reference: npt.NDArray[np.int64], candidate: npt.NDArray[np.int64]
) -> tuple[float, float, float]:
    """(Kolmogorov-Smirnov distance, sd of reference, sd of candidate) of two prediction
    histograms over equal-width bins of [0, 1]."""
    n1 = 0.0
    n2 = 0.0
    for i in range(reference.shape[0]):
        n1 += reference[i]
        n2 += candidate[i]
    if n1 == 0 or n2 == 0:
        return 0.0, 0.0, 0.0
    width = 1.0 / reference.shape[0]
    c1 = 0.0
    c2 = 0.0
    ks = 0.0
    s1 = s2 = q1 = q2 = 0.0
    for i in range(reference.shape[0]):
        c1 += reference[i]
        c2 += candidate[i]
        ks = max(ks, abs(c1 / n1 - c2 / n2))
        x = (i + 0.5) * width
        s1 += reference[i] * x
        s2 += candidate[i] * x
        q1 += reference[i] * x * x
        q2 += candidate[i] * x * x
    m1 = s1 / n1
    m2 = s2 / n2
    return ks, math.sqrt(max(q1 / n1 - m1 * m1, 0.0)), math.sqrt(max(q2 / n2 - m2 * m2, 0.0))


def distribution_reference(
    reference: npt.NDArray[np.int64], candidate: npt.NDArray[np.int64]
) -> tuple[float, float, float]:
    if reference.sum() == 0 or candidate.sum() == 0:
        return 0.0, 0.0, 0.0
    f1 = np.cumsum(reference) / reference.sum()
    f2 = np.cumsum(candidate) / candidate.sum()
    x = (np.arange(reference.size) + 0.5) / reference.size

    def sd(h: npt.NDArray[np.int64]) -> float:
        return float(np.sqrt(np.cov(x, fweights=h, bias=True)))

    return float(np.abs(f1 - f2).max()), sd(reference), sd(candidate)


@njit(cache=True)
def srm_kernel(champion: float, challenger: float, split_bp: float) -> tuple[float, float]:
    """Sample ratio mismatch: (chi-square, p-value) of requests per arm against the split.
    One degree of freedom, so p = erfc(sqrt(chi2 / 2))."""
    total = champion + challenger
    share = split_bp / layout.BASIS_POINTS
    if total <= 0 or share <= 0.0 or share >= 1.0:
        return 0.0, 1.0
    e2 = total * share
    e1 = total - e2
    chi2 = (champion - e1) ** 2 / e1 + (challenger - e2) ** 2 / e2
    return chi2, math.erfc(math.sqrt(chi2 / 2.0))


@njit(cache=True)
def srm_sequential_kernel(
    champion: float, challenger: float, split_bp: float, concentration: float
) -> float:
    """Always-valid sample-ratio test: the log Bayes factor of "the challenger's share is
    anything" (Beta(k s, k (1 - s)) around the split s) against "it is exactly s".

    The Beta-binomial mixture likelihood ratio is a nonnegative martingale under the null,
    so by Ville's inequality P(it ever exceeds 1/alpha) <= alpha however often it is looked
    at: 1 / BF is an always-valid p-value (the sequential SRM test of Lindon and Malek,
    "Anytime-valid inference for multinomial count data", NeurIPS 2022, two-arm case).
    A chi-square p-value checked every second would cross any fixed line on noise alone.
    """
    share = split_bp / layout.BASIS_POINTS
    if champion + challenger <= 0 or share <= 0.0 or share >= 1.0:
        return 0.0
    a = concentration * share
    b = concentration * (1.0 - share)
    log_mixture = (
        math.lgamma(a + challenger) + math.lgamma(b + champion) - math.lgamma(a + b + champion
        + challenger) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )  # fmt: skip
    log_null = challenger * math.log(share) + champion * math.log(1.0 - share)
    return log_mixture - log_null


@njit(cache=True)
def error_evalue_kernel(errors: float, n: float, limit: float) -> float:
    """Always-valid test of "error rate > limit": the log of an e-value for H0: rate <= limit.

    A mixture, with equal weights, of the likelihood ratios of rates limit * 2^j (j = 1..12,
    below 1) against the limit. Under any rate <= limit each ratio is a supermartingale, so
    by Ville's inequality the mixture ever reaching 1/alpha has probability <= alpha, however
    often it is looked at. A confidence bound checked every second would not hold that: at a
    0.1% limit one early error puts any fixed-level bound above it.
    """
    if n <= 0 or limit <= 0.0 or limit >= 1.0:
        return 0.0
    ok = n - errors
    terms = np.empty(12)
    k = 0
    for j in range(1, 13):
        p = limit * 2.0**j
        if p >= 1.0:
            break
        terms[k] = errors * math.log(p / limit) + ok * math.log((1.0 - p) / (1.0 - limit))
        k += 1
    top = terms[:k].max()
    total = 0.0
    for i in range(k):
        total += math.exp(terms[i] - top)
    return top + math.log(total / k)


@njit(cache=True)
def wilson_kernel(events: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) with no trials."""
    if n <= 0:
        return 0.0, 1.0
    p = events / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


# --- per-arm metrics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Marginals:
    """Per dimension value (rows in `labels` order): requests, errors, impressions, clicks,
    predicted-CTR sum."""

    labels: tuple[tuple[str, str], ...]  # (dimension, value)
    table: npt.NDArray[np.float64]  # rows × 5

    def of(self, dimension: str) -> list[tuple[str, npt.NDArray[np.float64]]]:
        return [(v, self.table[i]) for i, (d, v) in enumerate(self.labels) if d == dimension]


class SegmentCodes:
    """The segment space flattened for `marginals_kernel`: each cell's row per dimension."""

    def __init__(self, space: SegmentSpace) -> None:
        labels: list[tuple[str, str]] = []
        offsets = []
        for dim, values in zip(DIMENSIONS, space.values, strict=True):
            offsets.append(len(labels))
            labels.extend((dim, v) for v in values)
        codes = np.empty((space.n_cells, len(DIMENSIONS)), dtype=np.int64)
        shape = tuple(len(v) for v in space.values)
        for d, index in enumerate(np.unravel_index(np.arange(space.n_cells), shape)):
            codes[:, d] = offsets[d] + index
        self.labels = tuple(labels)
        self.codes = codes


@dataclass(frozen=True)
class ArmMetrics:
    requests: int
    errors: int  # raised, NaN, out of range, features; timeouts are the latency check's
    timeouts: int
    fallbacks: int
    stale_routed: int
    predictions: int
    out_of_range: int
    latency_us: tuple[int, int, int, int]  # p50, p99, p99.9, max
    latency_count: int
    impressions: int
    clicks: int
    predicted: float  # sum of predicted CTR over impressions
    pred_hist: npt.NDArray[np.int64]
    paired: npt.NDArray[np.float64]  # the paired sums (router.paired; guardrails.paired)
    paired_requests: int
    pairs_dropped: int
    bucket_clicks: npt.NDArray[np.float64]
    bucket_impressions: npt.NDArray[np.float64]
    bucket_predicted: npt.NDArray[np.float64]
    marginals: Marginals

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def calibration(self) -> float:
        return self.predicted / self.clicks if self.clicks else math.nan


def measure(totals: SlotTotals, codes: SegmentCodes) -> ArmMetrics:
    c = totals.counters
    cells = np.empty((totals.seg_requests.shape[0], 5))
    cells[:, 0:2] = totals.seg_requests
    cells[:, 2:4] = totals.seg_events
    cells[:, 4] = totals.seg_pred_sum
    table = marginals_kernel(cells, codes.codes, len(codes.labels))
    lat = hdr.percentiles(totals.latency, _PERCENTILES)
    return ArmMetrics(
        requests=int(c[layout.Counter.REQUESTS]),
        errors=totals.errors - int(c[layout.Counter.ERR_TIMEOUT]),
        timeouts=int(c[layout.Counter.ERR_TIMEOUT]),
        fallbacks=int(c[layout.Counter.FALLBACKS]),
        stale_routed=int(c[layout.Counter.STALE_ROUTED]),
        predictions=int(c[layout.Counter.CANDIDATES]),
        out_of_range=int(c[layout.Counter.OUT_OF_RANGE_PREDICTIONS]),
        latency_us=(int(lat[0]), int(lat[1]), int(lat[2]), int(lat[3])),
        latency_count=int(totals.latency.sum()),
        impressions=totals.impressions,
        clicks=totals.clicks,
        predicted=float(totals.seg_pred_sum.sum()),
        pred_hist=totals.pred_hist,
        paired=np.asarray(totals.paired, np.float64),
        paired_requests=int(c[layout.Counter.PAIRED]),
        pairs_dropped=int(c[layout.Counter.PAIRS_DROPPED]),
        bucket_clicks=totals.bucket_events[:, 1].astype(np.float64),
        bucket_impressions=totals.bucket_events[:, 0].astype(np.float64),
        bucket_predicted=totals.bucket_pred_sum.astype(np.float64),
        marginals=Marginals(codes.labels, table),
    )
