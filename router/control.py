"""The control block: the control word, the model slot table, the heartbeat, the hash seed.

The control word packs the split (basis points), the champion slot, whether a
challenger is present and a generation counter into one aligned 64-bit word, so a
worker reads all of it with one load and every request sees either the old or the
new split. `ControlBlock` reads it (workers, views); `ControlWriter` is the one
writer (the evaluator): it flips the word, fills model slots and beats the heart.

Heartbeats (the evaluator's here, each worker's in its slab) are on `beat_ns`, the
machine's monotonic clock: setting the wall clock back an hour must not make a dead
evaluator look alive for that hour, nor setting it forward make every worker stale.
"""

from __future__ import annotations

import secrets
import time
from typing import NamedTuple

from router.layout import BASIS_POINTS
from router.shared_memory import SharedMemory

# bits 0-15 split in basis points | bit 16 champion slot | bit 17 challenger
# present | bit 18 shadow (phase 0: the challenger scores copies, router.shadow) |
# bits 32-63 generation. Bit 18 is 0 in words written before it existed: no shadow.
_SPLIT_MASK = 0xFFFF
_CHAMPION_BIT = 16
_CHALLENGER_BIT = 17
_SHADOW_BIT = 18
_GENERATION_SHIFT = 32


def beat_ns() -> int:
    """The heartbeat clock: CLOCK_MONOTONIC, one clock for every process of the machine
    (after a reboot it restarts, and a heartbeat left from before reads as stale)."""
    return time.monotonic_ns()


class ControlWord(NamedTuple):
    split_bp: int
    champion_slot: int
    has_challenger: bool
    generation: int

    @property
    def challenger_slot(self) -> int:
        return 1 - self.champion_slot

    @property
    def challenger_split_bp(self) -> int:
        """The challenger's share in force: 0 when there is no challenger."""
        return self.split_bp if self.has_challenger else 0


def pack(
    split_bp: int, champion_slot: int, has_challenger: bool, generation: int, shadow: bool = False
) -> int:
    if not 0 <= split_bp <= BASIS_POINTS:
        raise ValueError(f"split_bp must be in 0..{BASIS_POINTS}, got {split_bp}")
    if champion_slot not in (0, 1):
        raise ValueError(f"champion_slot must be 0 or 1, got {champion_slot}")
    return (
        split_bp
        | (champion_slot << _CHAMPION_BIT)
        | (int(has_challenger) << _CHALLENGER_BIT)
        | (int(shadow) << _SHADOW_BIT)
        | ((generation & 0xFFFF_FFFF) << _GENERATION_SHIFT)
    )


def unpack(word: int) -> ControlWord:
    return ControlWord(
        word & _SPLIT_MASK,
        (word >> _CHAMPION_BIT) & 1,
        bool((word >> _CHALLENGER_BIT) & 1),
        word >> _GENERATION_SHIFT,
    )


def shadow_of(word: int) -> bool:
    """Is the rollout in its shadow phase (phase 0)? Apart from `ControlWord`, whose
    four fields callers unpack as a tuple."""
    return bool((word >> _SHADOW_BIT) & 1)


class ControlBlock:
    """Read access to the control block of a mapped state file."""

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm
        self._fields = shm.control

    def word(self) -> int:
        return self.shm.control_word()

    def read(self) -> ControlWord:
        return unpack(self.shm.control_word())

    def heartbeat_ns(self) -> int:
        return int(self._fields["heartbeat_ns"])

    def heartbeat_age_s(self) -> float:
        age = beat_ns() - self.heartbeat_ns()
        return age / 1e9 if age >= 0 else float("inf")  # from before a reboot: stale

    @property
    def hash_seed(self) -> int:
        return int(self._fields["hash_seed"])

    @property
    def evaluator_pid(self) -> int:
        return int(self._fields["evaluator_pid"])

    def slot_model(self, slot: int) -> int:
        """The model version the slot table names for `slot` (0: none)."""
        return int(self._fields["slot_model"][slot])

    def slot_seq(self, slot: int) -> int:
        return int(self._fields["slot_seq"][slot])

    def loaded_everywhere(self, slot: int, stale_after_s: float) -> bool:
        """Has every live worker acknowledged the model now in `slot`?"""
        slabs = self.shm.slabs
        live = slabs["heartbeat_ns"] > beat_ns() - int(stale_after_s * 1e9)
        acked = slabs["slot_seq"][:, slot] == self._fields["slot_seq"][slot]
        return bool((acked | ~live).all())


class ControlWriter(ControlBlock):
    """The single writer of the control block (the evaluator process)."""

    def flip(
        self, split_bp: int, champion_slot: int, has_challenger: bool, shadow: bool = False
    ) -> None:
        """Publish a new split in one aligned store, with the next generation."""
        generation = self.read().generation + 1
        word = pack(split_bp, champion_slot, has_challenger, generation, shadow)
        self.shm.write_control(word)

    def load_slot(self, slot: int, version: int) -> None:
        """Name the model for `slot`; workers load it and start its counts from zero."""
        self._fields["slot_model"][slot] = version
        self._fields["slot_seq"][slot] = self.slot_seq(slot) + 1

    def beat(self) -> None:
        self._fields["heartbeat_ns"] = beat_ns()

    def set_hash_seed(self, seed: int) -> None:
        """Fleet mode: every host hashes with the fleet's seed, so a request ID lands in
        the same arm whichever pod serves it."""
        self._fields["hash_seed"] = seed

    def claim(self, pid: int) -> None:
        """Record the evaluator's pid and make sure a hash seed exists (first start)."""
        self._fields["evaluator_pid"] = pid
        if self.hash_seed == 0:
            self._fields["hash_seed"] = secrets.randbits(63) | 1
