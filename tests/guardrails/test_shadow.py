"""Phase 0 (shadow): which checks judge it, what advancing waits for, the policy's view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import POLICY, Slot, evidence, healthy, served

from guardrails import checks
from guardrails.policy import HOUR, Action, Phase, State, decide
from router.shadow import ShadowConfig

SHADOW = dataclasses.replace(POLICY, shadow=ShadowConfig(min_hours=2.0, min_requests=1_000))


def shadow_runs(n: int, **kw: int) -> Slot:
    """A challenger's runs on copies: requests and predictions, never an impression."""
    return Slot().requests(n, **kw).predictions(served(n, 5))


def test_shadow_phase_is_judged_by_the_phase_1_checks_that_need_no_clicks() -> None:
    e = evidence(healthy(), shadow_runs(2_000), policy=SHADOW, split_bp=0)
    results = checks.evaluate(SHADOW, e, 0)
    assert [r.name for r in results] == [
        "predictions_in_range",
        "error_rate",
        "segment_error_rate",
        "latency_p99",
        "prediction_spread",
        "prediction_shift",
        "min_duration",
        "min_requests",
    ]
    assert [r.phase for r in results[-2:]] == [0, 0]


@pytest.mark.parametrize(
    ("runs", "hours", "action"),
    [
        pytest.param(2_000, 2.0, Action.ADVANCE, id="enough"),
        pytest.param(999, 2.0, Action.HOLD, id="too-few-runs"),
        pytest.param(2_000, 1.9, Action.HOLD, id="too-early"),
    ],
)
def test_shadow_phase_advances_on_its_duration_and_runs(
    runs: int, hours: float, action: Action
) -> None:
    e = evidence(
        healthy(), shadow_runs(runs), policy=SHADOW, split_bp=0, time_in_phase_s=hours * HOUR
    )
    results = checks.evaluate(SHADOW, e, 0)
    decision = decide(SHADOW, 0, results, e.time_in_phase_s, False)
    assert decision.action == action
    if action == Action.ADVANCE:
        assert decision.reason == "every guardrail of phase 0 passed"


@pytest.mark.parametrize(
    ("challenger", "guardrail"),
    [
        pytest.param(
            Slot().requests(10).predictions(np.array([np.nan])), "predictions_in_range", id="nan"
        ),
        pytest.param(shadow_runs(2_000, errors=100), "error_rate", id="errors"),
        pytest.param(
            Slot().requests(2_000, latency_us=30_000).predictions(served(2_000, 5)),
            "latency_p99",
            id="slow",
        ),
        pytest.param(
            Slot().requests(2_000).predictions(np.full(2_000, 0.02)), "prediction_spread", id="flat"
        ),
    ],
)
def test_shadow_phase_breach_rolls_back(challenger: Slot, guardrail: str) -> None:
    e = evidence(healthy(), challenger, policy=SHADOW, split_bp=0)
    decision = decide(SHADOW, 0, checks.evaluate(SHADOW, e, 0), 0.0, False)
    assert (decision.action, decision.guardrail) == (Action.ROLLBACK, guardrail)


def test_shadow_phase_past_its_maximum_stops() -> None:
    e = evidence(healthy(), shadow_runs(10), policy=SHADOW, split_bp=0)
    results = checks.evaluate(SHADOW, e, 0)
    assert any(r.state == State.WAITING for r in results)
    decision = decide(SHADOW, 0, results, SHADOW.max_s(0), False)
    assert (decision.action, decision.guardrail) == (Action.STOP, "max_duration")


def test_policy_phase_0_is_the_shadow_phase() -> None:
    assert POLICY.first_phase == 1 and SHADOW.first_phase == 0
    assert SHADOW.phase(0) == Phase(0, 0, 2.0, 24.0, 0)
    assert SHADOW.phase(1) == POLICY.phases[0]
    scaled = dataclasses.replace(SHADOW, sample_scale=0.01, time_scale=0.5)
    assert scaled.shadow_min_requests() == 10 and scaled.min_s(0) == 1.0 * HOUR
