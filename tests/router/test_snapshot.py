"""Summing the workers' slabs: SlotTotals arithmetic and `take` over a real state file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from router import layout, recording, snapshot
from router.control import ControlWriter, beat_ns, pack
from router.layout import Counter
from router.shared_memory import Geometry, SharedMemory
from router.snapshot import SlotTotals

N_CELLS, N_BUCKETS = 4, 10
GEOMETRY = Geometry(n_slabs=3, n_cells=N_CELLS, n_buckets=N_BUCKETS)
FIELDS = layout.slot_dtype(N_CELLS, N_BUCKETS).names or ()
TABLES = layout.table_words(N_CELLS, N_BUCKETS)


def _totals(seed: int) -> SlotTotals:
    """A slot's totals with every field filled with distinct small numbers."""
    rng = np.random.default_rng(seed)
    record = np.zeros((), dtype=layout.slot_dtype(N_CELLS, N_BUCKETS))
    for name in FIELDS:
        record[name] = rng.integers(0, 1000, size=record[name].shape)
    return SlotTotals(**{name: record[name].copy() for name in FIELDS})


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[SharedMemory]:
    m = SharedMemory.open(tmp_path, GEOMETRY)
    yield m
    m.close()


# -- SlotTotals -------------------------------------------------------------------------------
def test_slot_totals_add_sums_every_field() -> None:
    a, b = _totals(1), _totals(2)
    total = a + b
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(total, name), getattr(a, name) + getattr(b, name))


def test_slot_totals_sub_undoes_add() -> None:
    a, b = _totals(1), _totals(2)
    back = (a + b) - b
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(back, name), getattr(a, name))


def test_slot_totals_add_leaves_its_operands_alone() -> None:
    a, b = _totals(1), _totals(2)
    before = a.counters.copy()
    _ = a + b
    _ = a - b
    np.testing.assert_array_equal(a.counters, before)


def test_slot_totals_read_counters_errors_impressions_and_clicks() -> None:
    t = _totals(3)
    t.counters[:] = 0
    t.counters[Counter.REQUESTS] = 50
    t.counters[Counter.ERR_RAISED] = 2
    t.counters[Counter.ERR_TIMEOUT] = 3
    t.counters[Counter.ERR_FEATURES] = 4
    t.counters[Counter.FALLBACKS] = 9  # a consequence of errors, not one more error
    t.seg_events[:] = [[10, 1], [20, 2], [0, 0], [5, 0]]
    assert t.counter(Counter.REQUESTS) == 50
    assert t.errors == 2 + 3 + 4
    assert (t.impressions, t.clicks) == (35, 3)


# -- take -------------------------------------------------------------------------------------
def _work(shm: SharedMemory, slab: int, slot: int, requests: int, clicks: int) -> None:
    """What a worker records: `requests` requests (one prediction each, 0.02), an impression
    for each, and `clicks` clicks, all in segment cell 1."""
    addr = shm.slot_address(slab, slot)
    for _ in range(requests):
        recording.record_predictions(addr, np.array([0.02], dtype=np.float32))
        recording.record_request(addr, 500, 1, 0)
        recording.record_event(addr, TABLES, 1, 2, 0, 0.02)
    for _ in range(clicks):
        recording.record_event(addr, TABLES, 1, 2, 1, 0.02)


def test_snapshot_take_sums_every_slab(shm: SharedMemory) -> None:
    for slab, (requests, clicks) in enumerate([(3, 1), (5, 0), (7, 2)]):
        _work(shm, slab, 0, requests, clicks)
    totals = snapshot.take(shm).slots[0]
    assert totals.counter(Counter.REQUESTS) == totals.counter(Counter.CANDIDATES) == 15
    assert totals.latency.sum() == 15
    assert totals.seg_requests[1].tolist() == [15, 0]
    assert (totals.impressions, totals.clicks) == (15, 3)
    assert totals.bucket_events[2].tolist() == [15, 3]
    assert totals.seg_pred_sum[1] == pytest.approx(15 * 0.02)  # over impressions only
    assert totals.pred_hist.sum() == 15


def test_snapshot_take_keeps_the_two_slots_apart(shm: SharedMemory) -> None:
    _work(shm, 0, 0, 4, 0)
    _work(shm, 1, 1, 6, 1)
    snap = snapshot.take(shm)
    assert snap.slots[0].counter(Counter.REQUESTS) == 4
    assert snap.slots[1].counter(Counter.REQUESTS) == 6
    assert (snap.slots[0].clicks, snap.slots[1].clicks) == (0, 1)


def test_snapshot_take_counts_only_slabs_that_acknowledged_the_slot(shm: SharedMemory) -> None:
    ControlWriter(shm).load_slot(0, 7)  # a new model in slot 0: sequence 1
    for slab in range(3):
        _work(shm, slab, 0, 1, 0)
    shm.slabs["slot_seq"][0, 0] = 1
    shm.slabs["slot_seq"][1, 0] = 1
    # slab 2 still counts the slot's previous model (sequence 0)
    snap = snapshot.take(shm)
    assert snap.slot_model == (7, 0) and snap.slot_seq == (1, 0)
    assert snap.slots[0].counter(Counter.REQUESTS) == 2


def test_snapshot_take_reads_the_control_word(shm: SharedMemory) -> None:
    shm.write_control(pack(300, 1, True, 5))
    _work(shm, 0, 1, 2, 0)
    _work(shm, 0, 0, 1, 0)
    snap = snapshot.take(shm)
    assert (snap.split_bp, snap.champion_slot, snap.has_challenger) == (300, 1, True)
    assert snap.champion is snap.slots[1] and snap.challenger is snap.slots[0]
    assert snap.champion.counter(Counter.REQUESTS) == 2


def test_snapshot_take_sums_rejects_by_reason(shm: SharedMemory) -> None:
    malformed = layout.REJECT_INDEX["malformed_body"]
    too_large = layout.REJECT_INDEX["batch_too_large"]
    shm.slabs["rejects"][0, malformed] = 2
    shm.slabs["rejects"][2, malformed] = 3
    shm.slabs["rejects"][1, too_large] = 1
    rejects = snapshot.take(shm).rejects
    assert len(rejects) == len(layout.REJECT_REASONS)
    assert (rejects[malformed], rejects[too_large], rejects.sum()) == (5, 1, 6)


def test_snapshot_live_workers_counts_fresh_heartbeats(shm: SharedMemory) -> None:
    now = beat_ns()
    shm.slabs["heartbeat_ns"][:] = [now, now - 2 * 10**9, now - 60 * 10**9]
    assert snapshot.take(shm).live_workers == 2  # heard from in the last 5 s
    assert snapshot.take(shm, live_after_ns=now - 10**9).live_workers == 1


def test_snapshot_live_workers_skips_slabs_never_claimed(shm: SharedMemory) -> None:
    assert snapshot.take(shm).live_workers == 0  # every heartbeat is still 0
