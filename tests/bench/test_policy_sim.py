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


def test_run_reads_the_policy() -> None:
    """The walk's phases and thresholds are the Setting's Policy: promotion after 11 days is
    at phase 5's minimum (phases 1-4 take 9 days at theirs, phase 5 two)."""
    policy = Policy(promote_after_days=11.0)
    rows, _ = policy_sim.run(Setting(look_s=LOOK_S, effects=(0.10,), policy=policy), 60, 3)
    assert rows[0].sequential.promoted >= 0.9
    assert rows[0].sequential.median_days == pytest.approx(11.0)


def test_run_names_what_ended_the_runs() -> None:
    s = _row(0.0).sequential
    assert set(s.stopped_by) <= {"max_duration", "segment_degradation"}
    assert s.stopped_by["max_duration"] >= 0.8
    assert sum(s.rolled_back_by.values()) == pytest.approx(s.rolled_back)


def test_run_reproducible_with_seed() -> None:
    assert _row(0.01, runs=40, seed=5) == _row(0.01, runs=40, seed=5)


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
