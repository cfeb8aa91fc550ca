"""The always-valid sequential bound (guardrails/confidence_sequence.py): its crossing rate under
the null, its width, and its degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from guardrails.beta_comparison import BetaArm
from guardrails.confidence_sequence import sequential_difference, sequential_rho


def test_sequential_difference_null_crossing_rate_within_alpha() -> None:
    # Equal arms, 20/80 split, 200 looks: how often does the upper bound ever go below 0?
    rng = np.random.default_rng(3)
    runs, looks, per_look, ctr, alpha = 300, 200, 2_500, 0.05, 0.05
    n2 = np.cumsum(rng.binomial(per_look, 0.2, (runs, looks)), axis=1)
    n1 = np.arange(1, looks + 1) * per_look - n2
    c1 = np.cumsum(rng.binomial(np.diff(n1, prepend=0, axis=1), ctr), axis=1)
    c2 = np.cumsum(rng.binomial(np.diff(n2, prepend=0, axis=1), ctr), axis=1)
    z_fixed = stats.norm.ppf(1 - alpha)
    sequential_fired = fixed_fired = 0
    for r in range(runs):
        seq = fixed = False
        for k in range(looks):
            champion = BetaArm(int(n1[r, k]), int(c1[r, k]))
            challenger = BetaArm(int(n2[r, k]), int(c2[r, k]))
            result = sequential_difference(champion, challenger, alpha=alpha, n_star=250_000)
            seq |= result.challenger_worse
            sd = math.sqrt(
                champion.ctr * (1 - champion.ctr) / champion.impressions
                + challenger.ctr * (1 - challenger.ctr) / challenger.impressions
            )
            fixed |= result.estimate + z_fixed * sd < 0
        sequential_fired += seq
        fixed_fired += fixed
    # alpha + 3 binomial standard errors at 300 runs (0.038) as slack.
    assert sequential_fired / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    # The same looks with a fixed-sample bound cross far more often (the peeking problem): the
    # simulation can tell the two apart.
    assert fixed_fired / runs > 0.15


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N={n:g}") for n in (1e3, 1e5, 4e6, 1e8)])
def test_sequential_difference_wider_than_fixed_sample_bound(n: float) -> None:
    champion = BetaArm(int(0.8 * n), int(0.8 * n * 0.02))
    challenger = BetaArm(int(0.2 * n), int(0.2 * n * 0.02))
    result = sequential_difference(champion, challenger)
    p1, p2 = (
        (champion.clicks + 0.5) / (champion.impressions + 1),
        (challenger.clicks + 0.5) / (challenger.impressions + 1),
    )
    sd = math.sqrt(p1 * (1 - p1) / champion.impressions + p2 * (1 - p2) / challenger.impressions)
    assert result.half_width > stats.norm.ppf(0.95) * sd * 1.2


def test_sequential_difference_tightest_at_n_star() -> None:
    champion, challenger = BetaArm(800_000, 16_000), BetaArm(200_000, 3_900)
    at = sequential_difference(champion, challenger, n_star=1e6).half_width
    assert at < sequential_difference(champion, challenger, n_star=1e5).half_width
    assert at < sequential_difference(champion, challenger, n_star=1e7).half_width


@pytest.mark.parametrize(
    ("challenger_clicks", "worse"),
    [pytest.param(3_600, True, id="minus-10pct"), pytest.param(4_020, False, id="plus-half-pct")],
)
def test_sequential_difference_flags_clear_regression(challenger_clicks: int, worse: bool) -> None:
    result = sequential_difference(BetaArm(800_000, 16_000), BetaArm(200_000, challenger_clicks))
    assert result.challenger_worse is worse
    assert result.lower < result.estimate < result.upper


@pytest.mark.parametrize(
    ("champion", "challenger", "reason"),
    [
        pytest.param(BetaArm(0, 0), BetaArm(10, 1), "no_impressions", id="no-impressions"),
        pytest.param(BetaArm(10, 20), BetaArm(10, 1), "invalid_counts", id="invalid"),
    ],
)
def test_sequential_difference_degenerate_inputs_give_trivial_bound(
    champion: BetaArm, challenger: BetaArm, reason: str
) -> None:
    result = sequential_difference(champion, challenger)
    assert (result.reason, result.lower, result.upper) == (reason, -1.0, 1.0)
    assert not result.challenger_worse


def test_sequential_difference_zero_clicks_is_finite() -> None:
    result = sequential_difference(BetaArm(1_000, 0), BetaArm(1_000, 0))
    assert result.reason == "" and math.isfinite(result.half_width) and result.half_width > 0


@pytest.mark.parametrize(
    ("alpha", "n_star"),
    [pytest.param(0.5, 1e6, id="alpha-half"), pytest.param(0.05, 0.0, id="n-star-zero")],
)
def test_sequential_rho_rejects_bad_parameters(alpha: float, n_star: float) -> None:
    with pytest.raises(ValueError):
        sequential_rho(alpha, n_star)
