from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import FIELDS, Slot, healthy

from guardrails.rollouts import Journal, Rollout, RolloutState
from router.snapshot import SlotTotals


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state")
    yield j
    j.close()


def rollout(rid: str = "r1", state: RolloutState = RolloutState.RUNNING, **kw: Any) -> Rollout:
    r = Rollout(rid, challenger=2, champion=1, state=state, phase=1, started=1e3, phase_started=1e3)
    return dataclasses.replace(r, **kw)


def baseline() -> SlotTotals:
    slot = healthy(seed=3).events(1_000, 7, prediction=0.123)
    slot.t.counters[5] = 9
    return slot.totals()


def assert_same_totals(got: SlotTotals | None, want: SlotTotals) -> None:
    assert got is not None
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def without_baseline(r: Rollout) -> Rollout:
    return dataclasses.replace(r, baseline=None)


# --- rollouts -----------------------------------------------------------------------------------


def test_journal_save_get_round_trips_every_field(journal: Journal) -> None:
    r = rollout(
        phase=3,
        phase_started=5_000.5,
        ended=9_000.25,
        outcome="rolled_back",
        reason="latency_p99 12.01 (threshold < 10 ms)",
        paused=True,
        phase_requests=[1_234, 56],
        phases=[{"phase": 1, "started": 1_000.0, "ended": 3_000.0}, {"phase": 2}],
        baseline=baseline(),
    )
    journal.save(r, with_baseline=True)
    got = journal.get("r1")
    assert without_baseline(got) == without_baseline(r)
    assert got.state is RolloutState.RUNNING
    assert_same_totals(got.baseline, baseline())


def test_journal_save_without_baseline_keeps_the_stored_one(journal: Journal) -> None:
    r = rollout(baseline=baseline())
    journal.save(r, with_baseline=True)
    journal.save(dataclasses.replace(r, phase=2, phase_started=2_000.0, baseline=None))
    got = journal.get("r1")
    assert (got.phase, got.phase_started) == (2, 2_000.0)
    assert_same_totals(got.baseline, baseline())


def test_journal_save_keeps_the_start_the_rollout_moved_to(journal: Journal) -> None:
    """A rollout starts when its challenger is loaded everywhere, not when it was asked
    for: the later start must be what a restarted evaluator reads back."""
    r = rollout(state=RolloutState.LOADING, started=1_000.0, phase_started=1_000.0)
    journal.save(r)
    journal.save(dataclasses.replace(r, state=RolloutState.RUNNING, started=1_001.5))
    assert journal.get("r1").started == 1_001.5


def test_journal_save_new_rollout_without_baseline_has_none(journal: Journal) -> None:
    journal.save(rollout(baseline=baseline()))
    assert journal.get("r1").baseline is None


def test_journal_get_unknown_rollout_raises_key_error(journal: Journal) -> None:
    with pytest.raises(KeyError, match="nope"):
        journal.get("nope")


@pytest.mark.parametrize(
    ("state", "active"),
    [pytest.param(s, s in ("loading", "running", "paused"), id=s.value) for s in RolloutState],
)
def test_journal_active_returns_only_loading_running_paused(
    journal: Journal, state: RolloutState, active: bool
) -> None:
    journal.save(rollout("r1", state))
    found = journal.active()
    assert state.active is active
    assert (found is not None and found.id == "r1") is active


def test_journal_active_is_the_newest_active_rollout(journal: Journal) -> None:
    journal.save(rollout("old", RolloutState.PAUSED, started=1.0))
    journal.save(rollout("new", RolloutState.RUNNING, started=3.0))
    journal.save(rollout("done", RolloutState.PROMOTED, started=5.0))
    found = journal.active()
    assert found is not None and found.id == "new"


def test_journal_all_lists_rollouts_by_start(journal: Journal) -> None:
    for rid, started in (("b", 20.0), ("c", 30.0), ("a", 10.0)):
        journal.save(rollout(rid, RolloutState.STOPPED, started=started))
    assert [r.id for r in journal.all()] == ["a", "b", "c"]


def test_journal_outcomes_counts_finished_rollouts(journal: Journal) -> None:
    states = ["rolled_back"] * 3 + ["promoted"] * 2 + ["stopped", "running", "loading"]
    for i, s in enumerate(states):
        journal.save(rollout(f"r{i}", RolloutState(s), started=float(i)))
    assert journal.outcomes() == {"rollbacks": 3, "promotions": 2, "stops": 1}


def test_journal_outcomes_empty_is_zero(journal: Journal) -> None:
    assert journal.outcomes() == {"rollbacks": 0, "promotions": 0, "stops": 0}


def test_journal_new_id_names_time_and_challenger(journal: Journal) -> None:
    assert journal.new_id(7, 0.0) == "r19700101T000000-v7"


# --- events -------------------------------------------------------------------------------------


def fill(journal: Journal) -> list[int]:
    spec = [("r1", "start"), ("r1", "metrics"), ("r2", "start"), ("r1", "advance")]
    spec += [("r1", "metrics"), ("r2", "rollback"), ("r1", "metrics")]
    return [journal.append(rid, kind, 1, {"i": i}, 100.0 + i) for i, (rid, kind) in enumerate(spec)]


def test_journal_append_returns_growing_seq_and_round_trips_data(journal: Journal) -> None:
    seqs = fill(journal)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    data = {"p99": np.float64(12.5), "hist": np.arange(3), "n": np.int64(4), "s": "x"}
    seq = journal.append("r3", "rollback", 2, data, 555.5)
    (event,) = journal.events("r3")
    assert (event.seq, event.rollout_id, event.t, event.kind, event.phase) == (
        seq,
        "r3",
        555.5,
        "rollback",
        2,
    )
    assert event.data == {"p99": 12.5, "hist": [0, 1, 2], "n": 4, "s": "x"}


def test_journal_append_refuses_what_json_cannot_hold(journal: Journal) -> None:
    with pytest.raises(TypeError, match="object"):
        journal.append("r1", "metrics", 1, {"x": object()}, 1.0)
    assert journal.events() == []


@pytest.mark.parametrize(
    ("rollout_id", "kinds", "want"),
    [
        pytest.param(None, (), [0, 1, 2, 3, 4, 5, 6], id="all"),
        pytest.param("r1", (), [0, 1, 3, 4, 6], id="by-rollout"),
        pytest.param(None, ("start",), [0, 2], id="by-kind"),
        pytest.param(None, ("start", "rollback"), [0, 2, 5], id="by-kinds"),
        pytest.param("r1", ("metrics",), [1, 4, 6], id="by-rollout-and-kind"),
        pytest.param("r9", (), [], id="unknown-rollout"),
    ],
)
def test_journal_events_filter(
    journal: Journal, rollout_id: str | None, kinds: tuple[str, ...], want: list[int]
) -> None:
    fill(journal)
    assert [e.data["i"] for e in journal.events(rollout_id, kinds)] == want


@pytest.mark.parametrize(
    ("rollout_id", "kinds", "limit", "want"),
    [
        pytest.param(None, (), 1, [6], id="latest-one"),
        pytest.param(None, (), 3, [4, 5, 6], id="latest-three"),
        pytest.param("r1", ("metrics",), 2, [4, 6], id="latest-filtered"),
        pytest.param("r2", (), 10, [2, 5], id="more-than-there-are"),
    ],
)
def test_journal_events_limit_returns_latest_n_in_order(
    journal: Journal, rollout_id: str | None, kinds: tuple[str, ...], limit: int, want: list[int]
) -> None:
    fill(journal)
    assert [e.data["i"] for e in journal.events(rollout_id, kinds, limit)] == want


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("UPDATE events SET kind = 'tampered'", id="update-all"),
        pytest.param("UPDATE events SET data = '{}' WHERE seq = 1", id="update-one"),
        pytest.param("DELETE FROM events", id="delete-all"),
        pytest.param("DELETE FROM events WHERE rollout_id = 'r2'", id="delete-some"),
    ],
)
def test_journal_events_are_append_only(journal: Journal, sql: str) -> None:
    fill(journal)
    before = journal.events()
    other = sqlite3.connect(journal.path)  # any code, not only the Journal
    try:
        for db in (journal.db, other):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(sql)
    finally:
        other.close()
    assert journal.events() == before


# --- restart ------------------------------------------------------------------------------------


def test_journal_second_instance_sees_the_same_state(tmp_path: Path) -> None:
    first = Journal(tmp_path / "state")
    first.save(rollout(baseline=baseline(), phase=4), with_baseline=True)
    fill(first)
    second = Journal(tmp_path / "state")  # while the first is still open
    got = second.get("r1")
    assert got.phase == 4
    assert_same_totals(got.baseline, baseline())
    assert second.events() == first.events()
    last = first.events()[-1].seq
    first.close()
    third = Journal(tmp_path / "state")  # after the first is gone
    assert third.append("r1", "resume", 4, {}, 200.0) == last + 1
    assert [e.kind for e in second.events("r1", limit=1)] == ["resume"]
    active = third.active()
    assert active is not None and active.id == "r1"
    second.close()
    third.close()


def test_journal_baseline_of_another_geometry_round_trips(journal: Journal) -> None:
    """The blob carries its own shapes: a small segment space comes back as it went in."""
    from router.config import Config

    small = Config.from_dict({"segments": {"device_type": ["mobile"]}, "calibration": {}})
    totals = Slot(small).requests(10).events(100, 3).totals()
    journal.save(rollout(baseline=totals), with_baseline=True)
    assert_same_totals(journal.get("r1").baseline, totals)
