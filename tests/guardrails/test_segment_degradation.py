"""Per-segment degradation (guardrails/segment_degradation.py) against quadrature."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from guardrails.segment_degradation import segment_degradation


def test_segment_degradation_flags_degraded_segment_and_waits_on_small_ones() -> None:
    result = segment_degradation(
        champion_impr=[1_000_000, 1_000_000, 500, 1_000_000],
        champion_clicks=[20_000, 20_000, 10, 20_000],
        challenger_impr=[1_000_000, 1_000_000, 500, 1_000_000],
        challenger_clicks=[18_000, 20_100, 8, 19_300],  # -10%, +0.5%, tiny, -3.5%
        threshold=0.05,
    )
    np.testing.assert_allclose(result.change, [-0.1, 0.005, -0.2, -0.035], atol=1e-12)
    assert result.enough.tolist() == [True, True, False, True]
    assert result.p_degraded[0] > 0.999
    assert result.p_degraded[1] < 1e-6
    assert 0.01 < result.p_degraded[3] < 0.2  # -3.5% observed, sd ~1%: unlikely beyond -5%
    assert result.failing().tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    ("n1", "c1", "n2", "c2"),
    [
        pytest.param(20_000, 400, 20_000, 370, id="400-clicks"),
        pytest.param(50_000, 1_000, 12_000, 225, id="unequal"),
        pytest.param(3_000, 1_500, 3_000, 1_380, id="high-ctr"),
    ],
)
def test_segment_degradation_matches_quadrature(n1: int, c1: int, n2: int, c2: int) -> None:
    threshold = 0.05
    result = segment_degradation([n1], [c1], [n2], [c2], threshold=threshold)
    a1, b1, a2, b2 = 1 + c1, 1 + n1 - c1, 1 + c2, 1 + n2 - c2
    # P(X2 < (1 - t) X1) = integral of f1(x) F2((1 - t) x) dx
    reference, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a1, b1) * stats.beta.cdf((1 - threshold) * x, a2, b2),
        0,
        1,
        points=[a1 / (a1 + b1)],
        limit=500,
    )
    # Normal approximation of the log ratio with skewness correction: error ~0.1/clicks.
    assert result.p_degraded[0] == pytest.approx(reference, abs=1e-3)


def test_segment_degradation_neutral_on_empty_and_invalid_segments() -> None:
    result = segment_degradation([0, 100, 1_000], [0, 150, 0], [10, 100, 1_000], [1, 2, 3])
    assert result.change.tolist() == [0.0, 0.0, 0.0]
    assert result.p_degraded[:2].tolist() == [0.0, 0.0]
    assert result.enough.tolist() == [False, False, False]
    assert np.isfinite(result.p_degraded).all()


def test_segment_degradation_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="one length"):
        segment_degradation([1, 2], [0, 0], [1], [0])
