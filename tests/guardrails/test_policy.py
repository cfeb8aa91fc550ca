from __future__ import annotations

from typing import Any

import pytest

from guardrails.checks import Result
from guardrails.policy import (
    DAY,
    HOUR,
    Action,
    Guards,
    Phase,
    Policy,
    State,
    decide,
)
from router.config import Config, ConfigError
from router.shadow import ShadowConfig


def policy(data: dict[str, Any]) -> Policy:
    return Policy.from_config(Config.from_dict(data))


# --- defaults: DESIGN.md "The five phases" ------------------------------------------------------


def test_policy_defaults_equal_the_design_table() -> None:
    p = policy({})
    assert p == Policy()
    assert [ph.number for ph in p.phases] == [1, 2, 3, 4, 5]
    assert [ph.split_bp for ph in p.phases] == [300, 1000, 2000, 4000, 5000]
    assert [(ph.min_hours, ph.max_hours) for ph in p.phases] == [
        (24, 48),
        (48, 72),
        (72, 120),
        (72, 120),
        (48, 72),
    ]
    assert p.phase(2).min_impressions == 50_000
    assert p.phase(3).min_impressions == 200_000
    assert [ph.p_better for ph in p.phases[2:]] == [0.6, 0.85, 0.90]
    assert p.phase(3).inconclusive_ok
    assert [ph.min_uplift for ph in p.phases[3:]] == [0.01, 0.01]
    assert p.promote_after_days == 12
    assert p.early_rollback == "sequential"
    assert (p.time_scale, p.sample_scale) == (1.0, 1.0)


def test_guards_defaults_equal_the_design_table() -> None:
    g = policy({}).guards
    assert g.max_error_rate == 0.001
    assert g.max_p99_ms == 10.0
    assert g.min_clicks_per_10k == 1.0
    assert g.max_segment_error_rate == 0.5
    assert (g.calibration_low, g.calibration_high) == (0.85, 1.15)
    assert (g.bucket_low, g.bucket_high) == (0.7, 1.4)
    assert g.max_segment_degradation == 0.05
    assert g.literal_p_worse == 0.9


# --- overrides ----------------------------------------------------------------------------------


def test_policy_from_config_applies_overrides() -> None:
    p = policy(
        {
            "phases": {"2": {"min_hours": 1, "min_impressions": 500}, "5": {"p_better": 0.95}},
            "rollout": {"time_scale": 0.001, "early_rollback": "literal", "promote_after_days": 3},
            "guardrails": {"max_p99_ms": 20, "min_requests": 10},
        }
    )
    assert p.phase(2) == Phase(2, 1000, 1.0, 72, 500)
    assert p.phase(5).p_better == 0.95
    assert p.phase(1) == Policy().phase(1) and p.phase(3) == Policy().phase(3)
    assert (p.time_scale, p.early_rollback, p.promote_after_days) == (0.001, "literal", 3.0)
    assert p.guards == Guards(max_p99_ms=20.0, min_requests=10)
    assert isinstance(p.guards.max_p99_ms, float)


def test_policy_from_config_accepts_fractional_hours() -> None:
    p = policy({"phases": {"2": {"min_hours": 0.5, "max_hours": 1.5}}})
    assert (p.phase(2).min_hours, p.phase(2).max_hours) == (0.5, 1.5)


def test_policy_time_scale_scales_durations() -> None:
    p = policy({"rollout": {"time_scale": 0.001}})
    assert [p.min_s(n) for n in range(1, 6)] == pytest.approx(
        [h * HOUR * 0.001 for h in (24, 48, 72, 72, 48)]
    )
    assert [p.max_s(n) for n in range(1, 6)] == pytest.approx(
        [h * HOUR * 0.001 for h in (48, 72, 120, 120, 72)]
    )
    assert p.promote_after_s == pytest.approx(12 * DAY * 0.001)
    assert p.min_impressions(3) == 200_000  # samples are not time


def test_policy_sample_scale_scales_minimum_impressions() -> None:
    p = policy({"rollout": {"sample_scale": 0.01}})
    assert [p.min_impressions(n) for n in (2, 3)] == [500, 2_000]
    assert p.min_s(1) == 24 * HOUR


def test_policy_shadow_phase_only_when_configured() -> None:
    assert policy({}).shadow is None
    shadow = policy({"phases": {"0": {"min_hours": 1, "sample": 0.5, "queue": 8}}}).shadow
    assert shadow == ShadowConfig(min_hours=1.0, sample=0.5, queue=8)


# --- configuration mistakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        pytest.param({"rollout": {"speed": 2}}, ["[rollout]", "speed"], id="unknown-rollout-key"),
        pytest.param({"phases": {"6": {}}}, ["[phases]", "6"], id="unknown-phase"),
        pytest.param({"phases": {"7": {}}}, ["[phases]", "7", "0 (shadow)"], id="phase-seven"),
        pytest.param(
            {"phases": {"0": {"split_bp": 100}}}, ["[phases.0]", "split_bp"], id="shadow-split"
        ),
        pytest.param({"phases": {"0": {"sample": 0}}}, ["[phases.0]", "sample"], id="sample-0"),
        pytest.param({"phases": {"0": {"queue": 0}}}, ["[phases.0]", "queue"], id="queue-0"),
        pytest.param(
            {"phases": {"0": {"min_requests": -1}}}, ["[phases.0]", "min_requests"], id="runs"
        ),
        pytest.param(
            {"phases": {"2": {"duration": 3}}}, ["[phases.2]", "duration"], id="unknown-phase-key"
        ),
        pytest.param(
            {"phases": {"2": {"number": 3}}}, ["[phases.2]", "number"], id="phase-number-fixed"
        ),
        pytest.param(
            {"guardrails": {"max_p95_ms": 5}}, ["[guardrails]", "max_p95_ms"], id="unknown-guard"
        ),
        pytest.param(
            {"rollout": {"phases": []}}, ["[rollout]", "phases"], id="rollout-phases-not-settable"
        ),
        pytest.param(
            {"rollout": {"time_scale": "fast"}}, ["[rollout]", "time_scale"], id="str-for-float"
        ),
        pytest.param(
            {"phases": {"1": {"split_bp": 3.5}}}, ["[phases.1]", "split_bp"], id="float-for-int"
        ),
        pytest.param(
            {"phases": {"1": {"split_bp": True}}}, ["[phases.1]", "split_bp"], id="bool-for-int"
        ),
        pytest.param(
            {"guardrails": {"min_requests": 1.5}}, ["[guardrails]", "min_requests"], id="guard-type"
        ),
        pytest.param(
            {"rollout": {"early_rollback": 1}}, ["[rollout]", "early_rollback"], id="int-for-str"
        ),
        pytest.param(
            {"phases": {"3": {"split_bp": 900}}}, ["[phases.3]", "split_bp"], id="split-shrinks"
        ),
        pytest.param(
            {"phases": {"2": {"split_bp": 300}}}, ["[phases.2]", "split_bp"], id="split-equal"
        ),
        pytest.param(
            {"phases": {"5": {"split_bp": 6000}}}, ["[phases.5]", "split_bp"], id="split-over-half"
        ),
        pytest.param(
            {"phases": {"2": {"min_hours": 80}}}, ["[phases.2]", "min_hours"], id="min-over-max"
        ),
        pytest.param(
            {"rollout": {"early_rollback": "eventually"}},
            ["[rollout]", "early_rollback", "eventually"],
            id="bad-early-rollback",
        ),
        pytest.param({"rollout": {"time_scale": 0}}, ["[rollout]", "time_scale"], id="scale-0"),
        pytest.param({"rollout": {"time_scale": 2}}, ["[rollout]", "time_scale"], id="scale-2"),
        pytest.param(
            {"rollout": {"sequential_alpha": 0.5}}, ["[rollout]", "sequential_alpha"], id="alpha"
        ),
        pytest.param(
            {"guardrails": {"calibration_high": 0.9}}, ["[guardrails]", "calibration"], id="band"
        ),
        pytest.param(
            {"guardrails": {"confidence": 1}}, ["[guardrails]", "confidence"], id="confidence"
        ),
    ],
)
def test_policy_from_config_rejects_mistakes_naming_the_key(
    data: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(data)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("data", "section"),
    [
        pytest.param({"phases": {"2": 5}}, "phases.2", id="phase-not-table"),
        pytest.param({"rollout": 5}, "rollout", id="rollout-not-table"),
        pytest.param({"guardrails": 5}, "guardrails", id="guardrails-not-table"),
    ],
)
def test_policy_from_config_rejects_section_that_is_not_a_table(
    data: dict[str, Any], section: str
) -> None:
    with pytest.raises(ConfigError, match=section):
        policy(data)


# --- decide -------------------------------------------------------------------------------------


def result(name: str, state: State, *, stops: bool = False) -> Result:
    return Result(name, 0.5, "< 1", state, 1, stops=stops)


PASSING = [result("error_rate", State.PASS), result("min_duration", State.PASS)]
WAITING = [result("error_rate", State.PASS), result("min_duration", State.WAITING)]


@pytest.mark.parametrize(
    "paused", [pytest.param(False, id="running"), pytest.param(True, id="paused")]
)
@pytest.mark.parametrize(
    ("stops", "action"),
    [
        pytest.param(False, Action.ROLLBACK, id="broken"),
        pytest.param(True, Action.STOP, id="stops"),
    ],
)
def test_decide_failure_acts_at_once(paused: bool, stops: bool, action: Action) -> None:
    results = [*WAITING, result("latency_p99", State.FAIL, stops=stops)]
    d = decide(Policy(), 2, results, 10.0, paused)
    assert d.action == action
    assert d.guardrail == "latency_p99"
    assert "latency_p99" in d.reason and "< 1" in d.reason


@pytest.mark.parametrize(
    ("phase", "action"),
    [
        *(pytest.param(n, Action.ADVANCE, id=f"phase-{n}") for n in range(1, 5)),
        pytest.param(5, Action.PROMOTE, id="phase-5"),
    ],
)
def test_decide_all_pass_advances_or_promotes(phase: int, action: Action) -> None:
    assert decide(Policy(), phase, PASSING, 0.0, False).action == action


@pytest.mark.parametrize(
    "over", [pytest.param(0.0, id="at-max"), pytest.param(3600.0, id="past-max")]
)
def test_decide_waiting_past_max_duration_stops(over: float) -> None:
    p = Policy()
    d = decide(p, 3, WAITING, p.max_s(3) + over, False)
    assert d.action == Action.STOP
    assert d.guardrail == "max_duration"
    assert "min_duration" in d.reason


def test_decide_max_duration_follows_time_scale() -> None:
    p = policy({"rollout": {"time_scale": 0.001}})
    assert decide(p, 1, WAITING, 48 * HOUR * 0.001, False).guardrail == "max_duration"
    assert decide(p, 1, WAITING, 48 * HOUR * 0.001 - 1, False).action == Action.HOLD


@pytest.mark.parametrize(
    "results", [pytest.param(PASSING, id="all-pass"), pytest.param(WAITING, id="waiting")]
)
def test_decide_paused_holds(results: list[Result]) -> None:
    d = decide(Policy(), 5, results, 1e9, True)
    assert d.action == Action.HOLD
    assert d.reason == "paused"


def test_decide_waiting_within_duration_holds() -> None:
    d = decide(Policy(), 2, WAITING, 0.0, False)
    assert d.action == Action.HOLD
    assert d.guardrail is None
