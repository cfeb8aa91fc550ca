"""The paired statistics (guardrails.paired): the kernel on summed pairs against NumPy on the
pairs themselves, its intervals against scipy, and the checks' states on crafted pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import POLICY, Slot, evidence, healthy, served
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from guardrails.paired import (
    MIN_INTERVAL_ROWS,
    paired_correlation,
    paired_kernel,
    paired_mean_ratio,
    paired_reference,
    paired_spread,
    t_quantile,
)
from guardrails.policy import State
from router.paired import pair_sums_reference

Z999 = float(stats.norm.ppf(0.9995))
P, W, F = State.PASS, State.WAITING, State.FAIL

probability = st.floats(0.0, 1.0, allow_nan=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(probability, probability), min_size=0, max_size=300),
    st.sampled_from([1.96, Z999]),
)
def test_paired_kernel_on_the_sums_matches_numpy_on_the_pairs(
    pairs: list[tuple[float, float]], z: float
) -> None:
    b = np.array([p[0] for p in pairs], np.float32)
    c = np.array([p[1] for p in pairs], np.float32)
    got = paired_kernel(pair_sums_reference(b, c), z)
    want = paired_reference(b, c, z)
    if b.size < 4:  # nothing is defined yet
        assert got[0] == want[0] == b.size and all(math.isnan(v) for v in got[1:])
        return
    # The sums lose what a two-pass variance keeps: compare where a side clearly varies.
    sd_b, sd_c = float(np.std(b.astype(np.float64))), float(np.std(c.astype(np.float64)))
    if 0 < min(sd_b, sd_c) < 1e-3 or (sd_b == 0) != (got[10] == 0):
        return
    assert got[0] == want[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("dof", [pytest.param(d, id=f"dof-{d}") for d in (8, 20, 100, 10_000)])
@pytest.mark.parametrize("z", [pytest.param(z, id=f"z-{z:.2f}") for z in (1.96, Z999)])
def test_t_quantile_is_within_a_percent_of_students(dof: int, z: float) -> None:
    exact = float(stats.t.ppf(stats.norm.cdf(z), dof))
    assert t_quantile(z, float(dof)) == pytest.approx(exact, rel=0.01)


def test_spread_interval_covers_the_true_ratio_as_often_as_it_says() -> None:
    """Correlated pairs with sd(c) / sd(b) = 0.5: the 95% interval holds 0.5 in ~95% of
    samples of 50 pairs (Pitman-Morgan's interval is exact for normal pairs)."""
    rng = np.random.default_rng(5)
    cover = 0
    for _ in range(2000):
        b = rng.normal(0.0, 1.0, 50)
        c = 0.5 * (0.6 * b + 0.8 * rng.normal(0.0, 1.0, 50)) + 3.0
        _, _, low, high, *_ = paired_kernel(pair_sums_reference(b + 3.0, c), 1.96)
        cover += low <= 0.5 <= high
    assert 0.93 <= cover / 2000 <= 0.97


def test_constant_challenger_has_no_spread_at_all() -> None:
    b = served(12)
    n, spread, low, high, r, *_ = paired_kernel(pair_sums_reference(b, np.full(12, 0.02)), Z999)
    assert (n, spread, low, high) == (12, 0.0, 0.0, 0.0)
    assert math.isnan(r)  # no correlation to speak of: the spread check judges it


# --- the checks ---------------------------------------------------------------------------------


def judged(challenger_pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, State]:
    e = evidence(healthy(seed=1), Slot().pairs(*challenger_pairs))
    return {r.name: r.state for r in (check(POLICY, e) for check in CHECKS)}


CHECKS = (paired_spread, paired_correlation, paired_mean_ratio)
ROWS = served(400, seed=3)
NOISE = np.random.default_rng(4).normal(0.0, 0.002, 400)
SWAPPED = served(400, seed=9)  # another ordering of the features: unrelated outputs


@pytest.mark.parametrize(
    ("b", "c", "want"),
    [
        pytest.param(ROWS, ROWS, (P, P, P), id="same-model"),
        pytest.param(ROWS, np.clip(ROWS * 1.1 + NOISE, 0, 1), (P, P, P), id="slightly-different"),
        pytest.param(ROWS[:11], np.full(11, 0.02), (F, W, W), id="constant-at-11-rows"),
        pytest.param(ROWS[:9], np.full(9, 0.02), (W, W, W), id="constant-below-the-floor"),
        pytest.param(ROWS[:50], ROWS[:50], (W, W, W), id="healthy-too-few"),
        pytest.param(ROWS, SWAPPED, (P, F, P), id="feature-swapped"),
        pytest.param(ROWS, np.clip(ROWS * 3.0, 0, 1), (P, P, F), id="scaled"),
        pytest.param(ROWS, ROWS * 0.05 + 0.02, (F, P, P), id="collapsed"),
        pytest.param(np.full(300, 0.02), ROWS[:300], (W, W, P), id="champion-flat"),
    ],
)
def test_paired_check_states(
    b: np.ndarray, c: np.ndarray, want: tuple[State, State, State]
) -> None:
    assert tuple(judged((b, c)).values()) == want


def test_paired_checks_fail_only_past_the_interval_floor() -> None:
    assert MIN_INTERVAL_ROWS == 10
    states = judged((ROWS[:10], np.full(10, 0.02)))
    assert states["paired_spread"] == F


def test_paired_result_names_rows_and_interval() -> None:
    e = evidence(healthy(seed=1), Slot().pairs(ROWS[:11], np.full(11, 0.02)))
    r = paired_spread(POLICY, e)
    assert r.value == 0.0 and r.threshold == ">= 0.25"
    assert r.detail.startswith("11 rows of 11 paired requests (0 dropped); interval 0-0")
