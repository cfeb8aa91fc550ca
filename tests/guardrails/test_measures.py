from __future__ import annotations

import math

import numpy as np
import pytest
from builders import CODES, CONFIG, Slot, cell, zero_totals
from scipy import stats

from guardrails.measures import (
    FAIL,
    PASS,
    WAITING,
    SegmentCodes,
    calibration_kernel,
    calibration_reference,
    distribution_kernel,
    distribution_reference,
    marginals_kernel,
    marginals_reference,
    measure,
    srm_kernel,
    wilson_kernel,
)
from router import hdr, layout
from router.segments import DIMENSIONS, SegmentSpace

Z95 = float(stats.norm.ppf(0.975))
Z999 = float(stats.norm.ppf(0.9995))
SMALL_SPACE = SegmentSpace.from_config(
    {
        "publisher_category": ["news"],
        "device_type": ["mobile", "desktop"],
        "country_tier": [],
        "creative_type": ["video"],
    }
)


# --- marginals ----------------------------------------------------------------------------------


def _random_marginals(seed: int, n_cells: int, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = rng.random((n_cells, 5)) * rng.integers(0, 1000, (n_cells, 1))
    codes = rng.integers(0, n_values, (n_cells, 4)).astype(np.int64)
    return table, codes


@pytest.mark.parametrize(
    ("table", "codes", "n_values"),
    [
        *(pytest.param(*_random_marginals(s, 64, 12), 12, id=f"random-seed{s}") for s in range(3)),
        pytest.param(np.zeros((8, 5)), _random_marginals(3, 8, 4)[1], 4, id="all-zero"),
        pytest.param(np.ones((1, 5)), np.zeros((1, 4), dtype=np.int64), 1, id="one-cell"),
        pytest.param(np.zeros((0, 5)), np.zeros((0, 4), dtype=np.int64), 3, id="no-cells"),
        pytest.param(
            np.arange(CONFIG.segments.n_cells * 5, dtype=np.float64).reshape(-1, 5),
            CODES.codes,
            len(CODES.labels),
            id="default-space",
        ),
    ],
)
def test_marginals_kernel_equals_reference(
    table: np.ndarray, codes: np.ndarray, n_values: int
) -> None:
    got = marginals_kernel(table, codes, n_values)
    np.testing.assert_allclose(got, marginals_reference(table, codes, n_values), rtol=1e-12)
    # every dimension sums the whole table once
    np.testing.assert_allclose(got.sum(axis=0), 4 * table.sum(axis=0), rtol=1e-12)


# --- calibration --------------------------------------------------------------------------------


def _random_calibration(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clicks = rng.poisson(rng.choice([0.0, 5.0, 60.0, 500.0], n)).astype(np.float64)
    predicted = clicks * rng.uniform(0.4, 2.5, n) + rng.uniform(0, 3, n)
    return clicks, predicted


@pytest.mark.parametrize(
    ("clicks", "predicted", "min_clicks"),
    [
        *(pytest.param(*_random_calibration(s, 100), 50.0, id=f"random-seed{s}") for s in range(4)),
        pytest.param(np.zeros(100), np.full(100, 3.0), 50.0, id="zero-clicks"),
        pytest.param(np.zeros(100), np.zeros(100), 0.0, id="zero-clicks-min-0"),
        pytest.param(np.array([400.0]), np.array([600.0]), 200.0, id="one-bucket"),
        pytest.param(np.array([]), np.array([]), 50.0, id="no-buckets"),
        pytest.param(np.array([100.0, 100.0]), np.array([70.0, 140.0]), 50.0, id="on-the-band"),
    ],
)
def test_calibration_kernel_equals_reference(
    clicks: np.ndarray, predicted: np.ndarray, min_clicks: float
) -> None:
    got = calibration_kernel(clicks, predicted, 0.7, 1.4, Z999, min_clicks)
    want = calibration_reference(clicks, predicted, 0.7, 1.4, Z999, min_clicks)
    for g, w in zip(got[:3], want[:3], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got[3], want[3])


def test_calibration_kernel_states_need_clicks_and_a_sure_interval() -> None:
    clicks = np.array([400.0, 20.0, 400.0, 60.0, 0.0])
    ratios = np.array([1.5, 1.5, 1.0, 1.5, 1.0])
    ratio, low, high, state = calibration_kernel(clicks, clicks * ratios, 0.85, 1.15, Z999, 200.0)
    assert state.tolist() == [FAIL, WAITING, PASS, WAITING, WAITING]
    np.testing.assert_allclose(ratio[:4], ratios[:4])
    np.testing.assert_allclose(low[0], 1.5 * math.exp(-Z999 / 20))
    np.testing.assert_allclose(high[0], 1.5 * math.exp(Z999 / 20))
    assert math.isnan(ratio[4]) and math.isnan(low[4]) and math.isnan(high[4])


# --- prediction distributions -------------------------------------------------------------------


def _hists(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.histogram(rng.beta(2, 90, 5_000), layout.N_PRED_BINS, (0, 1))[0]
    b = np.histogram(rng.beta(2, 60, 3_000) + 0.01 * seed, layout.N_PRED_BINS, (0, 1))[0]
    return a.astype(np.int64), b.astype(np.int64)


def _at(index: int, n: int = layout.N_PRED_BINS, count: int = 100) -> np.ndarray:
    h = np.zeros(n, dtype=np.int64)
    h[index] = count
    return h


@pytest.mark.parametrize(
    ("reference", "candidate"),
    [
        *(pytest.param(*_hists(s), id=f"random-seed{s}") for s in range(3)),
        pytest.param(np.zeros(1000, np.int64), _hists(0)[1], id="empty-reference"),
        pytest.param(_hists(0)[0], np.zeros(1000, np.int64), id="empty-candidate"),
        pytest.param(_hists(1)[0], _at(30), id="constant-candidate"),
        pytest.param(_at(0, 1, 7), _at(0, 1, 3), id="one-bin"),
        pytest.param(_at(10), _at(900), id="disjoint"),
    ],
)
def test_distribution_kernel_equals_reference(reference: np.ndarray, candidate: np.ndarray) -> None:
    got = distribution_kernel(reference, candidate)
    assert got == pytest.approx(distribution_reference(reference, candidate), abs=1e-9)


@pytest.mark.parametrize(
    ("reference", "candidate", "ks", "sd_candidate"),
    [
        pytest.param(_at(10), _at(10), 0.0, 0.0, id="identical-constant"),
        pytest.param(_at(10), _at(900), 1.0, 0.0, id="disjoint"),
        pytest.param(_at(10), _at(10) + _at(11), 0.5, 0.0005, id="half-a-bin-apart"),
    ],
)
def test_distribution_kernel_known_values(
    reference: np.ndarray, candidate: np.ndarray, ks: float, sd_candidate: float
) -> None:
    got_ks, sd_ref, sd_cand = distribution_kernel(reference, candidate)
    assert (got_ks, sd_ref, sd_cand) == pytest.approx((ks, 0.0, sd_candidate), abs=1e-9)


# --- sample ratio mismatch and the Wilson interval ----------------------------------------------


@pytest.mark.parametrize(
    ("champion", "challenger", "split_bp"),
    [
        pytest.param(9_700.0, 300.0, 300, id="exact-3pct"),
        pytest.param(8_000.0, 2_000.0, 300, id="20pct-at-3pct"),
        pytest.param(90_150.0, 9_850.0, 1000, id="slightly-low-10pct"),
        pytest.param(5_000.0, 5_000.0, 5000, id="even"),
        pytest.param(3.0, 1.0, 2000, id="tiny"),
    ],
)
def test_srm_kernel_matches_scipy_chisquare(
    champion: float, challenger: float, split_bp: int
) -> None:
    share = split_bp / layout.BASIS_POINTS
    total = champion + challenger
    want = stats.chisquare([champion, challenger], [total * (1 - share), total * share])
    chi2, p = srm_kernel(champion, challenger, float(split_bp))
    assert chi2 == pytest.approx(want.statistic, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(want.pvalue, rel=1e-6, abs=1e-300)


@pytest.mark.parametrize(
    ("champion", "challenger", "split_bp"),
    [
        pytest.param(0.0, 0.0, 300, id="no-requests"),
        pytest.param(100.0, 0.0, 0, id="split-0"),
        pytest.param(0.0, 100.0, 10_000, id="split-all"),
    ],
)
def test_srm_kernel_degenerate_is_no_evidence(
    champion: float, challenger: float, split_bp: int
) -> None:
    assert srm_kernel(champion, challenger, float(split_bp)) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("events", "n", "low", "high"),
    [
        pytest.param(0, 10, 0.0, 0.2775328, id="0-of-10"),
        pytest.param(5, 10, 0.2365931, 0.7634069, id="5-of-10"),
        pytest.param(10, 10, 0.7224672, 1.0, id="10-of-10"),
        pytest.param(1, 3, 0.0614919, 0.7923404, id="1-of-3"),
        pytest.param(0, 0, 0.0, 1.0, id="no-trials"),
    ],
)
def test_wilson_kernel_known_values(events: int, n: int, low: float, high: float) -> None:
    assert wilson_kernel(float(events), float(n), Z95) == pytest.approx((low, high), abs=1e-7)


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(3)])
def test_wilson_kernel_matches_scipy_binomtest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(1, 100_000))
        k = int(rng.binomial(n, rng.choice([0.001, 0.02, 0.5, 0.97])))
        confidence = float(rng.choice([0.9, 0.95, 0.999]))
        want = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
        z = float(stats.norm.ppf(0.5 + confidence / 2))
        assert wilson_kernel(float(k), float(n), z) == pytest.approx(
            (want.low, want.high), rel=1e-9, abs=1e-12
        )


@pytest.mark.parametrize(
    ("n", "p", "z", "at_least"),
    [
        pytest.param(100, 0.1, Z95, 0.93, id="n100-p10pct-95"),
        pytest.param(2_000, 0.01, Z95, 0.94, id="n2000-p1pct-95"),
        pytest.param(10_000, 0.002, Z95, 0.94, id="n10k-p0.2pct-95"),
        pytest.param(2_000, 0.01, Z999, 0.998, id="n2000-p1pct-99.9"),
    ],
)
def test_wilson_kernel_covers_nominal(n: int, p: float, z: float, at_least: float) -> None:
    """Exact coverage: the binomial probability of every count whose interval holds p."""
    ks = np.arange(n + 1)
    holds = np.array([lo <= p <= hi for lo, hi in (wilson_kernel(float(k), n, z) for k in ks)])
    assert stats.binom.pmf(ks, n, p)[holds].sum() >= at_least


# --- segment codes and measure ------------------------------------------------------------------


@pytest.mark.parametrize(
    "space",
    [pytest.param(CONFIG.segments, id="default"), pytest.param(SMALL_SPACE, id="small")],
)
def test_segment_codes_maps_each_cell_to_its_labels(space: SegmentSpace) -> None:
    codes = SegmentCodes(space)
    assert len(codes.labels) == sum(len(v) for v in space.values)
    assert codes.codes.shape == (space.n_cells, len(DIMENSIONS))
    for c in range(space.n_cells):
        rows = [codes.labels[r] for r in codes.codes[c]]
        assert rows == list(zip(DIMENSIONS, space.labels(c), strict=True))


def test_measure_sums_counters_and_events() -> None:
    gaming = cell(publisher_category="gaming", device_type="tablet")
    slot = (
        Slot()
        .requests(1_000, errors=3)
        .requests(500, errors=2, cell=gaming)
        .predictions(np.array([0.1, 0.2, np.nan, 1.5, 0.3]))
        .events(10_000, 150, prediction=0.015)
        .events(2_000, 80, prediction=0.04, cell=gaming)
    )
    slot.t.counters[layout.Counter.ERR_TIMEOUT] += 4
    slot.t.counters[layout.Counter.FALLBACKS] += 7
    slot.t.counters[layout.Counter.STALE_ROUTED] += 11
    m = slot.metrics()
    # Timeouts are the latency check's evidence, not errors.
    assert (m.requests, m.errors, m.timeouts) == (1_500, 5, 4)
    assert (m.fallbacks, m.stale_routed) == (7, 11)
    assert (m.predictions, m.out_of_range) == (3, 2)
    assert (m.impressions, m.clicks) == (12_000, 230)
    assert m.predicted == pytest.approx(10_000 * 0.015 + 2_000 * 0.04)
    assert m.error_rate == pytest.approx(5 / 1_500)
    assert m.ctr == pytest.approx(230 / 12_000)
    assert m.calibration == pytest.approx(m.predicted / 230)
    assert m.bucket_impressions[1] == 10_000 and m.bucket_clicks[4] == 80
    assert m.bucket_predicted.sum() == pytest.approx(m.predicted)
    np.testing.assert_array_equal(m.pred_hist, slot.t.pred_hist)


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(3)])
def test_measure_latency_percentiles_match_hdr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slot = Slot()
    latencies = rng.lognormal(6.5, 0.8, 3_000).astype(np.int64) + 1
    for us in latencies:
        slot.requests(1, latency_us=int(us))
    m = slot.metrics()
    wanted = np.array([50.0, 99.0, 99.9, 100.0])
    assert m.latency_us == tuple(int(v) for v in hdr.percentiles(slot.t.latency, wanted))
    reference = hdr.to_hdrhistogram(slot.t.latency)
    assert m.latency_us == tuple(reference.get_value_at_percentile(p) for p in wanted)
    assert m.latency_count == latencies.size


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(3)])
def test_measure_marginals_equal_segment_space_marginal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slot = Slot()
    n = CONFIG.segments.n_cells
    slot.t.seg_requests[:] = rng.integers(0, 100, (n, 2))
    slot.t.seg_events[:] = rng.integers(0, 1_000, (n, 2))
    slot.t.seg_pred_sum[:] = rng.random(n) * 20
    m = slot.metrics()
    per_cell = np.column_stack([slot.t.seg_requests, slot.t.seg_events, slot.t.seg_pred_sum])
    for dim, values in zip(DIMENSIONS, CONFIG.segments.values, strict=True):
        rows = m.marginals.of(dim)
        assert [v for v, _ in rows] == list(values)
        np.testing.assert_allclose(
            np.array([row for _, row in rows]), CONFIG.segments.marginal(per_cell, dim)
        )


def test_measure_empty_totals_is_zero_not_an_error() -> None:
    m = measure(zero_totals(CONFIG.segments.n_cells, CONFIG.n_buckets), CODES)
    assert (m.requests, m.errors, m.impressions, m.clicks, m.latency_count) == (0, 0, 0, 0, 0)
    assert m.latency_us == (0, 0, 0, 0)
    assert (m.error_rate, m.ctr) == (0.0, 0.0)
    assert math.isnan(m.calibration)
    assert not m.marginals.table.any()
