"""Every rollout scenario end to end: a real `rampart serve`, the simulator's real HTTP traffic
and events, the production guardrails on a scaled clock. Each asserts its verdict: outcome,
phase and the guardrail named (bench/scenarios.py holds the expectations).

The scenarios share one server and one simulator (a rollout after another, as a team rolls
out model after model), which saves a server start per scenario; `promote` runs last because
it changes the champion the others are measured against.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.scenarios import SCENARIOS, Session

ORDER = [n for n in SCENARIOS if n != "promote"] + ["promote"]


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    with Session(prefix="test-scenarios-") as s:
        yield s


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in ORDER])
def test_scenario_ends_as_expected(session: Session, name: str) -> None:
    verdict = session.rollout(SCENARIOS[name])
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
        # The replacement evaluator resumes the same rollout; its phase may have moved on,
        # since the phase clock kept running while the evaluator was down.
        assert freeze["same_rollout"] and freeze["resumed_phase"] >= freeze["phase_before"]
    if name == "restart":
        restart = verdict["restart"]
        assert restart["same_rollout"] and restart["phase_started_kept"]
        assert restart["phase_after"] == restart["phase_before"]
