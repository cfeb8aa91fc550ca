"""Durations survive the wall clock being set: an hour forward or back mid-phase neither
skips nor lengthens the phase, while recorded times (event log, rollout) stay wall-clock.

The machine's clock cannot be moved from a test: the evaluator's two clocks are the seam.
The wall clock is the rig's fake clock; the steady one reads it minus the jumps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_evaluator import HOUR, Rig, _rig

from guardrails.clock import Durations
from router.control import ControlWriter
from router.mailbox import Command
from router.shared_memory import Geometry, SharedMemory


class Steady:
    """The wall clock with its jumps taken out: what time.monotonic() would read."""

    def __init__(self, rig: Rig) -> None:
        self.rig, self.jumped = rig, 0.0

    def __call__(self) -> float:
        return self.rig.clock.now - self.jumped

    def jump(self, seconds: float) -> None:
        self.rig.clock.now += seconds
        self.jumped += seconds


def _ticks_to_phase_two(tmp_path: Path, jump_s: float, at_tick: int = 10) -> tuple[int, Rig]:
    rig = _rig(tmp_path)
    steady = Steady(rig)
    rig.evaluator.durations = Durations(steady)
    rig.start()
    for tick in range(1, 200):
        if tick == at_tick:
            steady.jump(jump_s)
        rig.step()
        r = rig.evaluator.rollout
        assert r is not None and r.state == "running", r and r.reason
        if r.phase == 2:
            return tick, rig
    raise AssertionError("phase 1 never ended")


@pytest.mark.parametrize(
    "jump_s", [pytest.param(HOUR, id="forward-1h"), pytest.param(-HOUR, id="back-1h")]
)
def test_a_wall_clock_jump_mid_phase_leaves_the_phase_decision_unchanged(
    tmp_path: Path, jump_s: float
) -> None:
    expected, reference = _ticks_to_phase_two(tmp_path / "steady", 0.0)
    reference.evaluator.close()
    assert expected > 24  # past phase 1's 24 h minimum (one tick per hour here); jump at 10
    ticks, rig = _ticks_to_phase_two(tmp_path / "jumped", jump_s)
    try:
        assert ticks == expected  # neither skipped (+1 h) nor lengthened (-1 h)
        r = rig.evaluator.rollout
        assert r is not None
        # What is recorded stays on the wall clock, jump included.
        assert r.phase_started == rig.clock.now
        advanced = rig.evaluator.journal.events(r.id, kinds=("advanced",))
        assert [e.t for e in advanced] == [rig.clock.now]
    finally:
        rig.evaluator.close()


def test_a_backward_jump_does_not_hold_the_load_timeout(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    steady = Steady(rig)
    rig.evaluator.durations = Durations(steady)
    try:
        rig.evaluator.apply(Command.START, {"version": "2"})
        rig.traffic.shm.slabs[0]["heartbeat_ns"] = 2**62  # alive, never acknowledging
        rig.evaluator.tick()
        steady.jump(-HOUR)
        rig.clock.now += 31  # 31 s pass; the wall clock reads an hour less
        rig.evaluator.tick()
        r = rig.evaluator.rollout
        assert r is not None and r.state == "stopped" and "load" in r.reason
    finally:
        rig.evaluator.close()


@pytest.mark.parametrize(
    "jump_s", [pytest.param(3600.0, id="forward"), pytest.param(-3600.0, id="back")]
)
def test_durations_since_a_start_set_this_process_ignore_wall_jumps(jump_s: float) -> None:
    steady = [100.0]
    d = Durations(lambda: steady[0])
    d.tick(1_700_000_000.0)
    start = d.wall_now
    d.keep(start)
    steady[0] += 5
    d.tick(1_700_000_005.0 + jump_s)
    assert d.since(start) == 5.0


@pytest.mark.parametrize(
    ("wall_now", "expected"),
    [
        pytest.param(1_700_000_050.0, 50.0, id="elapsed-by-wall"),
        pytest.param(1_699_990_000.0, 0.0, id="start-in-the-future-counts-zero"),
    ],
)
def test_durations_anchor_a_restored_start_by_the_wall_clock_once(
    wall_now: float, expected: float
) -> None:
    steady = [7.0]
    d = Durations(lambda: steady[0])
    d.tick(wall_now)
    assert d.since(1_700_000_000.0) == expected
    steady[0] += 3
    d.tick(wall_now + 3600)  # then the wall clock jumps; the duration does not
    assert d.since(1_700_000_000.0) == expected + 3


# -- heartbeats -------------------------------------------------------------------------------
@pytest.fixture
def block(tmp_path: Path) -> Iterator[ControlWriter]:
    shm = SharedMemory.open(tmp_path, Geometry(n_slabs=2, n_cells=4, n_buckets=10))
    yield ControlWriter(shm)
    shm.close()


def test_heartbeat_is_on_the_monotonic_clock(block: ControlWriter) -> None:
    # On the wall clock, a clock set back an hour makes every beat an hour "young": a dead
    # evaluator would look alive for that hour and workers keep the challenger's split.
    before = time.monotonic_ns()
    block.beat()
    assert before <= block.heartbeat_ns() <= time.monotonic_ns()
    assert 0 <= block.heartbeat_age_s() < 1.0


def test_a_heartbeat_from_the_future_is_stale(block: ControlWriter) -> None:
    # A state file kept across a reboot: its last beat is on the old boot's clock.
    block.shm.control["heartbeat_ns"] = time.monotonic_ns() + int(HOUR * 1e9)
    assert block.heartbeat_age_s() == float("inf")
