"""The whole-policy Monte Carlo (bench/policy_sim.py) on small runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import policy_sim
from bench.policy_sim import Setting
from guardrails.policy import Policy

RUNS = 120
LOOK_S = 600.0  # coarser than the default minute: the phase minimums are multiples of it


def _row(effect: float, runs: int = RUNS, seed: int = 3) -> policy_sim.Row:
    rows, impressions = policy_sim.run(Setting(look_s=LOOK_S, effects=(effect,)), runs, seed)
    assert impressions > 0
    return rows[0]


def test_run_better_challenger_mostly_promoted() -> None:
    row = _row(0.10)
    for outcome in (row.sequential, row.literal):
        assert outcome.promoted >= 0.9
        assert outcome.end_phase[4] >= 0.9
        # Phases 1-4 pass at their minimums (9 days); 12 days in all is phase 5's maximum.
        assert outcome.median_days == pytest.approx(12.0)


def test_run_worse_challenger_rolled_back_in_phase_3_by_sequential_rule() -> None:
    s = _row(-0.10).sequential
    assert s.rolled_back >= 0.9
    assert s.end_phase[2] >= 0.9
    assert s.rolled_back_by["ab_worse"] >= 0.9
    # At the first look of phase 3: the A/B check starts there, on 3 days of evidence.
    assert s.median_days_rolled_back is not None
    assert 3.0 <= s.median_days_rolled_back < 3.1


def test_run_equal_challenger_rarely_promoted() -> None:
    row = _row(0.0)
    for outcome in (row.sequential, row.literal):
        assert outcome.promoted <= 0.1  # promotion needs P(better) > 0.9 and uplift > 1%


def test_run_equal_challenger_stopped_at_phase_4_maximum() -> None:
    s = _row(0.0).sequential
    assert s.stopped >= 0.8
    assert s.median_days == pytest.approx((24 + 48 + 72 + 120) / 24)


def test_run_literal_rolls_back_equal_challenger_more_often_than_sequential() -> None:
    row = _row(0.0, runs=200)
    assert row.sequential.rolled_back <= 0.1  # alpha 0.05 over the whole rollout, plus noise
    assert row.literal.rolled_back >= row.sequential.rolled_back + 0.1


def test_run_reproducible_with_seed() -> None:
    assert _row(0.01, runs=40, seed=5) == _row(0.01, runs=40, seed=5)


def test_phase_table_follows_policy() -> None:
    p = Policy()
    table = policy_sim.phase_table(p)
    assert table[:, 0].tolist() == [300, 1000, 2000, 4000, 5000]
    assert table[0, 1] == p.min_s(1) and table[4, 2] == p.max_s(5)
    assert table[3, 4] == pytest.approx(0.85) and table[4, 5] == pytest.approx(0.01)
    assert table[2, 6] == 1.0  # phase 3 advances when inconclusive


@pytest.fixture(scope="module")
def detections() -> dict[str, policy_sim.Detection]:
    found = policy_sim.detection_times(Policy(), rate=250.0, runs=400, seed=2)
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
    detections: dict[str, policy_sim.Detection], failure: str, low_s: float, high_s: float
) -> None:
    d = detections[failure]
    assert low_s <= d.median_s <= high_s


def test_error_false_alarms_grow_with_error_rate() -> None:
    alarms = policy_sim.error_false_alarms(Policy(), 250.0, (0.0, 0.002), runs=20, seed=1)
    assert alarms[0].rolled_back == 0.0  # no errors, no rollback
    assert alarms[1].rolled_back == 1.0  # twice the threshold: always
    assert alarms[1].in_phase[0] == 1.0


def test_main_prints_markdown_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "policy_sim.json"
    code = policy_sim.main(
        ["--runs", "20", "--look-s", "3600", "--effects", "0,0.1", "--detection-runs", "50",
         "--error-runs", "0", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("`python -m bench.policy_sim --runs 20 --seed 1")
    assert "| +10% |" in text and "**literal** early rollback" in text
    assert "`prediction_spread`" in text
    document = json.loads(out.read_text())
    assert [r["relative_effect"] for r in document["rows"]] == [0.0, 0.1]
    assert document["rows"][1]["sequential"]["promoted"] == 1.0
