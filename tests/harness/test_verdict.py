from __future__ import annotations

from harness.scenarios import SCENARIOS
from harness.simulator_stats import SimStats
from harness.verdict import detection_seconds, verdict


def _stats(buckets: list[list[int]]) -> SimStats:
    """A run whose timeline (0.5 s buckets of champion, challenger, fallback answers) is
    `buckets`, started at wall time 1000."""
    stats = SimStats(rate=100, duration_s=len(buckets) / 2, timeline_s=0.5, started_at=1000.0)
    stats.buckets = buckets
    return stats


def test_detection_seconds_runs_from_first_challenger_answer_to_all_champion() -> None:
    stats = _stats([[50, 0, 0], [48, 2, 0], [47, 1, 2], [50, 0, 0], [50, 0, 0]])
    # The rollout started at 0.4 s; its challenger first answered in the bucket at 0.5 s.
    assert detection_seconds(SCENARIOS["broken-nan"], stats, {}, 1000.4) == 1.0


def test_detection_seconds_is_none_without_a_flip() -> None:
    stats = _stats([[50, 0, 0], [48, 2, 0], [47, 3, 0]])
    assert detection_seconds(SCENARIOS["broken-nan"], stats, {}, 1000.0) is None


def test_detection_seconds_after_a_freeze_waits_for_a_clean_second() -> None:
    stats = _stats([[48, 2, 0], [48, 2, 0], [49, 1, 0], [50, 0, 0], [50, 0, 0], [50, 0, 0]])
    extra = {"freeze": {"frozen_at": 1000.5, "phase_before": 1}}
    assert detection_seconds(SCENARIOS["evaluator-crash"], stats, extra, 1000.0) == 1.0


def test_verdict_compares_the_end_with_the_expectation() -> None:
    final = {
        "last_rollout": {"id": "r1", "state": "rolled_back", "phase": 1, "reason": "slow"},
        "events": [{"kind": "rolled_back", "guardrail": "latency_p99", "value": 26.1}],
    }
    stats = _stats([[50, 0, 0], [48, 2, 0], [50, 0, 0]])
    out = verdict(SCENARIOS["slow"], final, [(1, 0.3)], stats, None, {}, 2.0, 1000.0)
    assert out["passed"] and out["guardrail"] == "latency_p99" and out["value"] == 26.1
    assert out["detection_seconds"] == 0.5
    assert out["phases"] == [{"phase": 1, "entered_s": 0.3}]
    wrong = dict(final, events=[{"kind": "rolled_back", "guardrail": "error_rate"}])
    assert not verdict(SCENARIOS["slow"], wrong, [], stats, None, {}, 2.0, 1000.0)["passed"]
