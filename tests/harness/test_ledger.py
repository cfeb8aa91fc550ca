"""The release train follows its legs in the server's journal: a leg that started and ended
between two looks is still found, with its outcome, phases and events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from guardrails.rollouts import EventKind, Journal, Rollout, RolloutState
from harness.ledger import Ledger


def _rollout(rid: str, challenger: int, state: RolloutState, started: float) -> Rollout:
    return Rollout(
        rid,
        challenger=challenger,
        champion=1,
        state=state,
        phase=1,
        started=started,
        phase_started=started,
        phases=[{"phase": 1, "entered": started, "exited": None, "result": "current"}],
    )


def test_a_leg_that_began_and_ended_unseen_is_read_back_whole(tmp_path: Path) -> None:
    writer = Journal(tmp_path)
    # Leg A ran and ended, leg B already runs: /status would show only B.
    a = _rollout("ra", 2, RolloutState.ROLLED_BACK, 1_000.0)
    a.phases.append({"phase": 2, "entered": 1_001.5, "exited": 1_002.0, "result": "rolled_back"})
    a.phase, a.reason = 2, "paired_spread: 0.0 below 1e-4"
    writer.save(a)
    writer.append("ra", EventKind.ROLLED_BACK, 2, {"guardrail": "paired_spread", "value": 0.0}, 1e3)
    writer.append("ra", EventKind.METRICS, 2, {"requests": 10}, 1e3)
    writer.save(_rollout("rb", 3, RolloutState.RUNNING, 1_003.0))
    ledger = Ledger(tmp_path)
    try:
        r = ledger.until(2, lambda r: not r.state.active, time.monotonic() + 5)
        final = ledger.final(r)
        assert final["last_rollout"]["state"] == "rolled_back"
        assert final["last_rollout"]["phase"] == 2 and final["last_rollout"]["id"] == "ra"
        assert [e["kind"] for e in final["events"]] == ["rolled_back"]  # metrics left out
        assert final["events"][0]["guardrail"] == "paired_spread"
        assert ledger.phases(r) == [(1, 0.0), (2, 1.5)]
        assert ledger.of(3) is not None and ledger.of(4) is None
    finally:
        ledger.close()
        writer.close()


def test_until_waits_for_the_state_written_by_another_connection(tmp_path: Path) -> None:
    writer = Journal(tmp_path)
    ledger = Ledger(tmp_path)
    running = _rollout("rb", 3, RolloutState.RUNNING, 1_000.0)
    writer.save(running)
    ended = threading.Event()

    def end_later() -> None:  # the evaluator: another connection, another thread
        ended.wait(5)
        running.state = RolloutState.PROMOTED
        other = Journal(tmp_path)
        other.save(running)
        other.close()

    thread = threading.Thread(target=end_later)
    thread.start()
    waits: list[int] = []
    try:
        r = ledger.until(
            3,
            lambda r: r.state == RolloutState.PROMOTED,
            time.monotonic() + 10,
            lambda: (waits.append(1), ended.set()),
        )
        assert r.state == RolloutState.PROMOTED and waits
    finally:
        thread.join()
        ledger.close()
        writer.close()


def test_until_gives_up_at_its_deadline_naming_what_the_journal_holds(tmp_path: Path) -> None:
    writer = Journal(tmp_path)
    writer.save(_rollout("ra", 2, RolloutState.STOPPED, 1_000.0))
    ledger = Ledger(tmp_path)
    try:
        with pytest.raises(TimeoutError, match="v2 stopped"):
            ledger.until(5, lambda r: True, time.monotonic() + 0.3)
    finally:
        ledger.close()
        writer.close()
