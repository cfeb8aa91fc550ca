"""Summing every worker's slab into one snapshot: mergeable sufficient statistics.

The one function here serves `/metrics`, `/status` and the evaluator. A slab
counts towards a slot only if it has acknowledged the slot's current model
(its `slot_seq` equals the control block's), so counts of a model that left a
slot never mix with the one that replaced it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router import layout
from router.control import beat_ns, unpack
from router.shared_memory import SharedMemory

_SLOT_FIELDS = (
    "counters",
    "latency",
    "pred_hist",
    "paired",
    "seg_requests",
    "seg_events",
    "seg_pred_sum",
    "bucket_events",
    "bucket_pred_sum",
)


@dataclass(frozen=True)
class SlotTotals:
    counters: np.ndarray
    latency: np.ndarray
    pred_hist: np.ndarray
    paired: np.ndarray  # layout.N_PAIRED sums over paired rows (router.paired)
    seg_requests: np.ndarray
    seg_events: np.ndarray
    seg_pred_sum: np.ndarray
    bucket_events: np.ndarray
    bucket_pred_sum: np.ndarray

    def __add__(self, other: SlotTotals) -> SlotTotals:
        return SlotTotals(*(getattr(self, f) + getattr(other, f) for f in _SLOT_FIELDS))

    def __sub__(self, other: SlotTotals) -> SlotTotals:
        return SlotTotals(*(getattr(self, f) - getattr(other, f) for f in _SLOT_FIELDS))

    def counter(self, which: layout.Counter) -> int:
        return int(self.counters[which])

    @property
    def errors(self) -> int:
        return int(sum(self.counters[c] for c in layout.ERROR_COUNTERS))

    @property
    def impressions(self) -> int:
        return int(self.seg_events[:, 0].sum())

    @property
    def clicks(self) -> int:
        return int(self.seg_events[:, 1].sum())


@dataclass(frozen=True)
class Snapshot:
    taken_ns: int
    control: int
    heartbeat_ns: int
    slot_model: tuple[int, int]
    slot_seq: tuple[int, int]
    slots: tuple[SlotTotals, SlotTotals]
    rejects: np.ndarray  # by layout.REJECT_REASONS index
    live_workers: int

    @property
    def split_bp(self) -> int:
        return unpack(self.control).split_bp

    @property
    def champion_slot(self) -> int:
        return unpack(self.control).champion_slot

    @property
    def has_challenger(self) -> bool:
        return unpack(self.control).has_challenger

    @property
    def champion(self) -> SlotTotals:
        return self.slots[self.champion_slot]

    @property
    def challenger(self) -> SlotTotals:
        return self.slots[1 - self.champion_slot]


def take(shm: SharedMemory, live_after_ns: int | None = None) -> Snapshot:
    """Sum all slabs. Reads race with writers by design (no locks on the hot
    path); a counter read mid-update is off by at most the in-flight request."""
    ctrl = shm.control
    slabs = shm.slabs
    slot_seq = (int(ctrl["slot_seq"][0]), int(ctrl["slot_seq"][1]))
    slots = []
    for s in range(layout.N_SLOTS):
        acked = slabs["slot_seq"][:, s] == slot_seq[s]
        records = slabs["slots"][acked, s]
        slots.append(SlotTotals(*(records[f].sum(axis=0) for f in _SLOT_FIELDS)))
    now = beat_ns()  # heartbeats are on the monotonic clock
    horizon = live_after_ns if live_after_ns is not None else now - 5_000_000_000
    return Snapshot(
        taken_ns=now,
        control=shm.control_word(),
        heartbeat_ns=int(ctrl["heartbeat_ns"]),
        slot_model=(int(ctrl["slot_model"][0]), int(ctrl["slot_model"][1])),
        slot_seq=slot_seq,
        slots=(slots[0], slots[1]),
        rejects=slabs["rejects"].sum(axis=0)[: len(layout.REJECT_REASONS)],
        live_workers=int((slabs["heartbeat_ns"] > horizon).sum()),
    )
