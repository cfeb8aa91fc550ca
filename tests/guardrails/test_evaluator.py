"""The evaluator against a real shared-memory file, registry and journal, on a fake clock.

Traffic is written through the workers' own recording kernels (tests/support/traffic.py);
one tick of the fake clock is one hour of rollout time (time_scale 1/3600).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.models import write_model
from support.net import free_port
from support.traffic import Traffic
from support.webhook import webhook

from guardrails import evaluator as evaluator_mod
from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator
from guardrails.rollouts import Journal
from router import control, layout
from router.config import Config
from router.mailbox import Command
from router.registry import Registry, Status
from router.shared_memory import SharedMemory

HOUR = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _config(state: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "serve": {"state_dir": str(state)},
        "rollout": {"time_scale": 1 / HOUR, "sample_scale": 0.01, "window_s": 10.0},
        "guardrails": {"min_ctr_impressions": 1000, "min_calibration_clicks": 100},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return Config.from_dict(raw)


@dataclass
class Rig:
    config: Config
    shm: SharedMemory
    clock: FakeClock
    evaluator: Evaluator
    traffic: Traffic
    rng: np.random.Generator

    def split(self) -> int:
        split, _, has_challenger, _ = control.unpack(self.shm.control_word())
        return split if has_challenger else 0

    def step(
        self,
        *,
        n: int = 1000,
        ctr: tuple[float, float] = (0.02, 0.02),
        challenger: dict[str, Any] | None = None,
        prediction: tuple[float, float] = (0.02, 0.02),
        hours: float = 1.0,
    ) -> None:
        """One tick: `n` requests split as the control word says, each shown and clicked
        with the arm's true CTR, then the evaluator looks."""
        self.clock.now += hours * HOUR * self.config_scale
        self.traffic.sync()
        n_c = round(n * self.split() / layout.BASIS_POINTS)
        for arm, count, rate, pred, extra in (
            ("champion", n - n_c, ctr[0], prediction[0], {}),
            ("challenger", n_c, ctr[1], prediction[1], challenger or {}),
        ):
            if not count:
                continue
            self.traffic.requests(arm, count, **extra)
            clicks = int(self.rng.binomial(count, rate))
            self.traffic.events(arm, count, clicks, prediction=pred)
        self.evaluator.tick()

    @property
    def config_scale(self) -> float:
        return self.evaluator.policy.time_scale

    def run(self, ticks: int, **kwargs: Any) -> None:
        for _ in range(ticks):
            self.step(**kwargs)
            if not self.evaluator.rollout or not self.evaluator.rollout.state.active:
                return

    def start(self, version: str = "2") -> dict[str, Any]:
        out = self.evaluator.apply(Command.START, {"version": version})
        self.traffic.sync()
        self.evaluator.tick()  # every live worker acknowledged: phase 1
        return out


def _rig(tmp_path: Path, alerter: Alerter | None = None, **sections: dict[str, Any]) -> Rig:
    config = _config(tmp_path / "state", **sections)
    registry = Registry(config.state_path)
    registry.register(write_model(tmp_path / "a.onnx"))
    registry.register(write_model(tmp_path / "b.onnx", weights=[0.2] * 4))
    registry.close()
    shm = evaluator_mod.prepare(config)
    clock = FakeClock()
    ev = Evaluator(config, shm, clock=clock, alerter=alerter or Alerter(None, None))
    traffic = Traffic(shm, config)
    traffic.sync()
    ev.tick()
    return Rig(config, shm, clock, ev, traffic, np.random.default_rng(3))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = _rig(tmp_path)
    yield r
    r.evaluator.close()


def test_start_waits_for_every_worker_to_load_the_challenger(rig: Rig) -> None:
    rig.evaluator.apply(Command.START, {"version": "2"})
    rig.evaluator.tick()  # the worker has not acknowledged the slot yet
    assert rig.evaluator.rollout is not None and rig.evaluator.rollout.state == "loading"
    assert rig.split() == 0
    rig.traffic.sync()
    rig.evaluator.tick()
    assert rig.evaluator.rollout.state == "running"
    assert rig.split() == 300


def test_start_times_out_when_a_worker_never_loads(rig: Rig) -> None:
    rig.evaluator.apply(Command.START, {"version": "2"})
    rig.traffic.shm.slabs[0]["heartbeat_ns"] = 2**62  # alive, never acknowledging
    rig.clock.now += 31
    rig.evaluator.tick()
    r = rig.evaluator.rollout
    assert r is not None and r.state == "stopped" and "load" in r.reason
    assert rig.split() == 0


@pytest.mark.parametrize(
    ("phase", "split"),
    [pytest.param(2, 1000, id="phase2"), pytest.param(3, 2000, id="phase3")],
)
def test_phases_advance_when_duration_sample_and_guardrails_pass(
    rig: Rig, phase: int, split: int
) -> None:
    rig.start()
    for _ in range(200):
        rig.step()
        if rig.evaluator.rollout and rig.evaluator.rollout.phase == phase:
            break
    r = rig.evaluator.rollout
    assert r is not None and r.phase == phase and r.state == "running"
    assert rig.split() == split
    # It took at least the minimum duration of each earlier phase (24 h, then 48 h).
    assert r.phase_started - r.started >= (24 if phase == 2 else 72) * HOUR / HOUR - 1e-6


def test_promotion_after_all_five_phases_and_twelve_days(rig: Rig) -> None:
    champion_slot = control.unpack(rig.shm.control_word())[1]
    rig.start()
    rig.run(400, ctr=(0.02, 0.026), prediction=(0.02, 0.026))
    r = rig.evaluator.rollout
    assert r is not None
    assert r.state == "promoted", r.reason
    assert r.ended is not None and r.ended - r.started >= 12 * 24  # 12 days at 1 s per hour
    word = control.unpack(rig.shm.control_word())
    assert word[1] == 1 - champion_slot and word[0] == 0 and not word[2]
    registry = Registry(rig.config.state_path)
    assert registry.get(2).status == Status.CHAMPION
    assert registry.get(1).status == Status.RETIRED
    kinds = [e.kind for e in rig.evaluator.journal.events(r.id) if e.kind != "metrics"]
    assert kinds == ["started", "phase", "advanced", "advanced", "advanced", "advanced", "promoted"]


def test_equal_challenger_is_stopped_at_phase_four_maximum_duration(rig: Rig) -> None:
    rig.start()
    rig.run(400)
    r = rig.evaluator.rollout
    assert r is not None and r.state == "stopped"
    assert r.phase == 4 and "maximum duration" in r.reason
    assert Registry(rig.config.state_path).get(2).status == Status.FAILED


@pytest.mark.parametrize(
    ("guardrail", "kwargs"),
    [
        pytest.param("error_rate", {"challenger": {"errors": 5}}, id="errors"),
        pytest.param("latency_p99", {"challenger": {"latency_us": 25_000}}, id="slow"),
        pytest.param(
            "paired_spread",  # the paired rows show it ticks before 500 predictions per arm
            {"challenger": {"predictions": np.full(4, 0.02)}},
            id="constant",
        ),
        pytest.param(
            "predictions_in_range",
            {"challenger": {"predictions": np.array([np.nan])}},
            id="nan",
        ),
        pytest.param("clicks_per_10k", {"ctr": (0.02, 0.0)}, id="no-clicks"),
    ],
)
def test_phase_one_breach_rolls_back_in_the_tick_that_sees_it(
    rig: Rig, guardrail: str, kwargs: dict[str, Any]
) -> None:
    rig.start()
    rig.run(60, **kwargs)
    r = rig.evaluator.rollout
    assert r is not None and r.state == "rolled_back" and r.phase == 1
    assert rig.split() == 0
    event = rig.evaluator.journal.events(r.id, kinds=("rolled_back",))[0]
    assert event.data["guardrail"] == guardrail
    assert event.data["threshold"]
    assert Registry(rig.config.state_path).get(2).status == Status.FAILED
    # The flip happened in the tick whose evidence first showed the breach.
    states = {g["name"]: g["state"] for g in event.data["guardrails"]}
    assert states[guardrail] == "fail"


def test_constant_challenger_without_paired_scoring_is_caught_by_its_spread(
    tmp_path: Path,
) -> None:
    rig = _rig(tmp_path, paired={"enabled": False})
    try:
        rig.start()
        rig.run(60, challenger={"predictions": np.full(4, 0.02)})
        r = rig.evaluator.rollout
        assert r is not None and r.state == "rolled_back"
        event = rig.evaluator.journal.events(r.id, kinds=("rolled_back",))[0]
        assert event.data["guardrail"] == "prediction_spread"
        assert not any(g["name"].startswith("paired_") for g in event.data["guardrails"])
    finally:
        rig.evaluator.close()


def test_miscalibrated_challenger_rolls_back_in_phase_two(rig: Rig) -> None:
    rig.start()
    rig.run(200, prediction=(0.02, 0.03))
    r = rig.evaluator.rollout
    assert r is not None and r.state == "rolled_back" and r.phase == 2
    event = rig.evaluator.journal.events(r.id, kinds=("rolled_back",))[0]
    assert event.data["guardrail"] in ("calibration", "calibration_buckets")


def test_worse_challenger_rolls_back_in_phase_three(rig: Rig) -> None:
    rig.start()
    rig.run(300, ctr=(0.02, 0.015), prediction=(0.02, 0.015))
    r = rig.evaluator.rollout
    assert r is not None and r.state == "rolled_back" and r.phase == 3
    assert rig.evaluator.journal.events(r.id, kinds=("rolled_back",))[0].data["guardrail"] == (
        "ab_worse"
    )


def test_sample_ratio_mismatch_rolls_back(rig: Rig) -> None:
    rig.start()
    rig.traffic.sync()
    rig.traffic.requests("challenger", 400)  # far more than 3% of the phase's requests
    rig.run(5)
    r = rig.evaluator.rollout
    assert r is not None and r.state == "rolled_back"
    event = rig.evaluator.journal.events(r.id, kinds=("rolled_back",))[0]
    assert event.data["guardrail"] == "sample_ratio"


def test_paused_rollout_holds_its_phase_but_still_rolls_back(rig: Rig) -> None:
    rig.start()
    assert rig.evaluator.apply(Command.PAUSE, {})["state"] == "paused"
    rig.run(60)
    r = rig.evaluator.rollout
    assert r is not None and r.phase == 1 and r.state == "paused"
    rig.run(5, challenger={"errors": 10})
    assert r.state == "rolled_back"


def test_manual_rollback_and_promote(rig: Rig) -> None:
    rig.start()
    assert rig.evaluator.apply(Command.ROLLBACK, {})["ok"]
    assert rig.split() == 0
    assert rig.evaluator.apply(Command.ROLLBACK, {}) == {"ok": False, "error": "no_rollout"}
    registry = Registry(rig.config.state_path)
    v3 = registry.register(write_model(rig.config.state_path.parent / "c.onnx", bias=-3.5))
    rig.start(str(v3.version))
    assert rig.evaluator.apply(Command.PROMOTE, {})["ok"]
    assert registry.get(v3.version).status == Status.CHAMPION


def test_restart_resumes_the_rollout_in_the_same_phase(rig: Rig, tmp_path: Path) -> None:
    rig.start()
    for _ in range(200):
        rig.step()
        if rig.evaluator.rollout and rig.evaluator.rollout.phase == 2:
            break
    before = rig.evaluator.rollout
    assert before is not None and before.phase == 2
    rig.evaluator.close()
    again = Evaluator(rig.config, rig.shm, clock=rig.clock, alerter=Alerter(None, None))
    rig.evaluator = again
    rig.step()
    after = again.rollout
    assert after is not None and after.id == before.id
    assert after.phase == 2 and after.phase_started == before.phase_started
    assert rig.split() == 1000
    # The evidence survived: the challenger's counts include the ones before the restart.
    assert again.evidence is not None and again.evidence.challenger.impressions > 1000


def test_status_lists_guardrails_and_the_next_step(rig: Rig) -> None:
    rig.start()
    rig.step()
    status = rig.evaluator.status(rig.clock())  # what the evaluator process publishes
    assert status["phase"] == 1 and status["split_bp"] == 300 and status["state"] == "running"
    names = {g["name"] for g in status["guardrails"]}
    assert {"error_rate", "latency_p99", "prediction_spread", "sample_ratio"} <= names
    assert all(g["state"] in ("pass", "fail", "waiting") for g in status["guardrails"])
    assert status["next"].startswith("advance to phase 2")
    assert [p["result"] for p in status["phases"]] == ["current"] + ["pending"] * 4


def test_rollback_posts_the_slack_alert(tmp_path: Path) -> None:
    with webhook() as hook:
        r = _rig(tmp_path, Alerter(f"{hook.url}/hook", None, backoff_s=0.01))
        try:
            r.start()
            r.run(60, challenger={"errors": 5})
            r.evaluator.alerter.close(5.0)
            assert r.evaluator.rollout is not None and r.evaluator.rollout.state == "rolled_back"
            assert [x.path for x in hook.received] == ["/hook"]
            text = hook.received[0].body["text"]
            assert "error_rate" in text and "phase 1" in text and "0.10%" in text
        finally:
            r.evaluator.close()


def test_rollback_flips_in_the_same_tick_when_the_webhook_is_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/unreachable"  # nobody listens there
    r = _rig(tmp_path, Alerter(dead, dead, backoff_s=5.0, timeout_s=5.0))
    try:
        r.start()
        r.run(60, challenger={"errors": 5})
        assert r.evaluator.rollout is not None and r.evaluator.rollout.state == "rolled_back"
        assert r.split() == 0
        assert r.evaluator.tick_seconds < 1.0  # the tick never waited on delivery
    finally:
        r.evaluator.alerter.close(0.1)
        r.evaluator.close()


def test_event_log_is_readable_after_the_evaluator_is_gone(rig: Rig) -> None:
    rig.start()
    rig.run(60, challenger={"errors": 5})
    rollout_id = rig.evaluator.rollout.id if rig.evaluator.rollout else ""
    rig.evaluator.close()
    journal = Journal(rig.config.state_path)
    kinds = [e.kind for e in journal.events(rollout_id)]
    assert kinds[0] == "started" and "rolled_back" in kinds
    assert journal.get(rollout_id).reason.startswith("error_rate")
