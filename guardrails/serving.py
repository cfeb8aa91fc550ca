"""Where the evaluator's decisions take effect, and where its evidence comes from.

The evaluator decides the same way whatever it serves; this seam says *what* it
serves. Single-host mode: `LocalServing`, this host's control block and the sum of
its slabs. Fleet mode: the leader's `guardrails.fleet.FleetServing`, the fleet's
decision in the store and the sum of every host's published evidence.
"""

from __future__ import annotations

from typing import Protocol

from router import snapshot
from router.control import ControlWord, ControlWriter
from router.shared_memory import SharedMemory
from router.snapshot import Snapshot


class Serving(Protocol):
    def take(self) -> Snapshot:
        """The evidence: counts per slot, summed over every worker that serves."""
        ...

    def word(self) -> ControlWord: ...

    def flip(self, split_bp: int, champion_slot: int, has_challenger: bool) -> None:
        """Put a split in force (the rollback path calls this before anything slow)."""
        ...

    def slot_model(self, slot: int) -> int: ...

    def load_slot(self, slot: int, version: int) -> None: ...

    def loaded_everywhere(self, slot: int) -> bool:
        """Has every live worker loaded the model now in `slot`?"""
        ...


class LocalServing:
    """This host: the control block of its state file, written by this process only."""

    def __init__(self, shm: SharedMemory, stale_after_s: float) -> None:
        self.shm = shm
        self.control = ControlWriter(shm)
        self.stale_after_s = stale_after_s

    def take(self) -> Snapshot:
        return snapshot.take(self.shm)

    def word(self) -> ControlWord:
        return self.control.read()

    def flip(self, split_bp: int, champion_slot: int, has_challenger: bool) -> None:
        self.control.flip(split_bp, champion_slot, has_challenger)

    def slot_model(self, slot: int) -> int:
        return self.control.slot_model(slot)

    def load_slot(self, slot: int, version: int) -> None:
        self.control.load_slot(slot, version)

    def loaded_everywhere(self, slot: int) -> bool:
        return self.control.loaded_everywhere(slot, self.stale_after_s)
