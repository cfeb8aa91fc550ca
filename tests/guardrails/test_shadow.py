"""Phase 0 (shadow): which checks judge it, what advancing waits for, the policy's view."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import numpy as np
import pytest
from builders import POLICY, Slot, evidence, healthy, served
from support.models import write_model
from support.traffic import Traffic

from guardrails import checks, storage
from guardrails import evaluator as evaluator_mod
from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator
from guardrails.policy import HOUR, Action, Phase, State, decide
from guardrails.rollouts import RolloutState
from router import control
from router.config import Config
from router.mailbox import Command
from router.registry import Registry
from router.shadow import ShadowConfig
from router.shared_memory import SharedMemory

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


# --- the evaluator on a real state file --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _shadow_rig(tmp_path: Path) -> tuple[Evaluator, Traffic, SharedMemory, Clock]:
    config = Config.from_dict(
        {
            "serve": {"state_dir": str(tmp_path / "state")},
            "rollout": {"time_scale": 1 / HOUR},
            "guardrails": {"min_predictions": 100, "min_requests": 100},
            "phases": {"0": {"min_hours": 1.0, "min_requests": 100}},
        }
    )
    registry = Registry(config.state_path)
    registry.register(write_model(tmp_path / "a.onnx"))
    registry.register(write_model(tmp_path / "b.onnx", weights=[0.2] * 4))
    registry.close()
    shm = evaluator_mod.prepare(config)
    clock = Clock()
    ev = Evaluator(config, shm, clock=clock, alerter=Alerter(None, None))
    traffic = Traffic(shm, config)
    traffic.sync()
    ev.tick()
    ev.apply(Command.START, {"version": "2"})
    traffic.sync()  # every live worker has loaded the challenger
    ev.tick()
    return ev, traffic, shm, clock


def _word(shm: SharedMemory) -> tuple[int, bool, bool]:
    word = shm.control_word()
    w = control.unpack(word)
    return w.split_bp, w.has_challenger, control.shadow_of(word)


def test_evaluator_starts_in_shadow_and_advances_to_phase_1(tmp_path: Path) -> None:
    ev, traffic, shm, clock = _shadow_rig(tmp_path)
    try:
        assert ev.rollout is not None and ev.rollout.phase == 0
        assert _word(shm) == (0, True, True)  # the challenger loaded, copies, no share
        traffic.requests("champion", 300)
        traffic.requests("challenger", 300)  # its runs on copies
        clock.now += 1.0  # one hour of policy time: the phase's minimum
        ev.tick()
        assert ev.rollout.phase == 1
        assert _word(shm) == (300, True, False)
    finally:
        ev.close()
        shm.close()


def test_evaluator_shadow_breach_rolls_back(tmp_path: Path) -> None:
    ev, traffic, shm, _ = _shadow_rig(tmp_path)
    try:
        traffic.requests("challenger", 1, predictions=np.array([np.nan]))
        ev.tick()
        assert ev.rollout is not None and ev.rollout.state == RolloutState.ROLLED_BACK
        assert ev.rollout.reason.startswith("predictions_in_range")
        assert _word(shm) == (0, False, False)
    finally:
        ev.close()
        shm.close()


def test_evaluator_storage_hold_in_shadow_resumes_the_shadow_phase(tmp_path: Path) -> None:
    ev, _, shm, _ = _shadow_rig(tmp_path)
    try:
        storage.hold(ev, OSError(errno.ENOSPC, "No space left on device"))
        assert _word(shm) == (0, True, False)  # held: no copies either
        assert storage.resume(ev)
        assert _word(shm) == (0, True, True)
    finally:
        ev.close()
        shm.close()
