"""Every rollout scenario end to end: a real `rampart serve`, the simulator's real HTTP traffic
and events, the production guardrails on a scaled clock. Each asserts its verdict: outcome,
phase and the guardrail named (bench/scenarios.py holds the expectations)."""

from __future__ import annotations

import pytest

from bench.scenarios import SCENARIOS, run_scenario


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SCENARIOS])
def test_scenario_ends_as_expected(name: str) -> None:
    verdict = run_scenario(name)
    expected = SCENARIOS[name]
    assert verdict["outcome"] == expected.outcome, verdict
    assert verdict["phase"] == expected.phase, verdict
    assert (verdict["guardrail"] or "") in expected.guardrails, verdict
    assert verdict["passed"]
    if expected.outcome == "rolled_back":
        assert verdict["detection_seconds"] is not None
        assert verdict["alert"] is not None  # delivered to the local Slack webhook
    if name == "evaluator-crash":
        freeze = verdict["freeze"]
        assert freeze["effective_split_during_stale"] == 0
        assert verdict["detection_seconds"] <= 5.0  # stale_after_s is 3 s
        assert freeze["same_rollout"] and freeze["resumed_phase"] == freeze["phase_before"]
    if name == "restart":
        restart = verdict["restart"]
        assert restart["same_rollout"] and restart["phase_started_kept"]
        assert restart["phase_after"] == restart["phase_before"]
