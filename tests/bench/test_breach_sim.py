"""Phase-1 breach checks at production traffic (bench/breach_sim.py), on small runs."""

from __future__ import annotations

import pytest

from bench import breach_sim
from guardrails.policy import Policy


@pytest.fixture(scope="module")
def detections() -> dict[str, breach_sim.Detection]:
    found = breach_sim.detection_times(Policy(), rate=250.0, runs=400, seed=2)
    return {d.broken.failure: d for d in found}


@pytest.mark.parametrize(
    ("failure", "low_s", "high_s"),
    [
        pytest.param("NaN predictions", 1, 1, id="nan-first-tick"),
        pytest.param("errors on 100% of requests", 1, 2, id="errors-all-first-ticks"),
        pytest.param("errors on 5% of requests", 1, 15, id="errors-5pct-seconds"),
        # 200 samples at 7.5 requests/s: ~27 s; 500 predictions: ~67 s.
        pytest.param("slow (+15 ms, p99 >= 10 ms)", 20, 35, id="latency-200-samples"),
        pytest.param("constant predictions", 55, 80, id="constant-500-predictions"),
    ],
)
def test_detection_times_order_of_magnitude(
    detections: dict[str, breach_sim.Detection], failure: str, low_s: float, high_s: float
) -> None:
    d = detections[failure]
    assert low_s <= d.median_s <= high_s


def test_error_false_alarms_grow_with_error_rate() -> None:
    alarms = breach_sim.error_false_alarms(Policy(), 250.0, (0.0, 0.002), runs=5, seed=1)
    assert alarms[0].rolled_back == 0.0  # no errors, no rollback
    assert alarms[1].rolled_back == 1.0  # twice the threshold: always
    assert alarms[1].in_phase[0] == 1.0


def test_markdown_tables_name_guardrails_and_phases() -> None:
    p = Policy()
    detections = breach_sim.detection_times(p, rate=250.0, runs=20, seed=1)
    alarms = breach_sim.error_false_alarms(p, 250.0, (0.002,), runs=5, seed=1)
    text = "\n".join(breach_sim.markdown(detections, alarms, p, 250.0))
    assert "3% of 250 requests/s = 7.5/s" in text
    assert "| NaN predictions | `predictions_in_range` |" in text
    assert "through a 12-day rollout" in text
    assert "| 0.20% | 100.0% | 1: 100.0% |" in text
