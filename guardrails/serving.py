"""Where the evaluator's decisions take effect, and where its evidence comes from.

The evaluator decides the same way whatever it serves; this seam says *what* it
serves. Single-host mode: `LocalServing`, this host's control block and the sum of
its slabs. Fleet mode: the leader's `guardrails.fleet.FleetServing`, the fleet's
decision in the store and the sum of every host's published evidence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from router import snapshot
from router.control import ControlWord, ControlWriter
from router.mailbox import Command
from router.registry import ModelRecord, Status
from router.shared_memory import SharedMemory
from router.snapshot import Snapshot

if TYPE_CHECKING:
    from guardrails.checks import Result
    from guardrails.rollouts import Event, EventKind, Rollout


class Serving(Protocol):
    def take(self) -> Snapshot:
        """The evidence: counts per slot, summed over every worker that serves."""
        ...

    def word(self) -> ControlWord: ...

    def flip(
        self, split_bp: int, champion_slot: int, has_challenger: bool, shadow: bool = False
    ) -> None:
        """Put a split in force (the rollback path calls this before anything slow);
        `shadow`: the challenger scores copies of the champion's requests (phase 0)."""
        ...

    def slot_model(self, slot: int) -> int: ...

    def load_slot(self, slot: int, version: int) -> None: ...

    def loaded_everywhere(self, slot: int) -> bool:
        """Has every live worker loaded the model now in `slot`?"""
        ...

    def breaches(self, rollout_id: str) -> list[Result]:
        """Failures seen where they happened, before the summed evidence shows them (a
        fleet host that pulled the challenger locally); single-host mode has none."""
        ...


class ModelRegistry(Protocol):
    def get(self, version: int) -> ModelRecord: ...

    def with_status(self, status: Status) -> list[ModelRecord]: ...

    def set_status(
        self, version: int, status: Status, reason: str = "", rollout_id: str = ""
    ) -> None:
        """Record a status change; `rollout_id` names the rollout that made it. The local
        registry, MLflow's (router/mlflow_registry.py: aliases and version tags) and the
        fleet's implement it."""
        ...

    def close(self) -> None: ...


class Mailbox(Protocol):
    def pending(self) -> list[tuple[Any, Command, dict[str, Any]]]: ...

    def finish(self, command_id: Any, result: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RolloutLog(Protocol):
    """Rollout state (to resume after a restart) and the append-only event log."""

    last_seq: int

    def new_id(self, challenger: int, now: float) -> str: ...

    def save(self, r: Rollout, *, with_baseline: bool = False) -> None: ...

    def active(self) -> Rollout | None: ...

    def get(self, rollout_id: str) -> Rollout: ...

    def all(self) -> list[Rollout]: ...

    def append(
        self, rollout_id: str, kind: EventKind, phase: int, data: dict[str, Any], t: float
    ) -> int: ...

    def events(
        self,
        rollout_id: str | None = None,
        kinds: tuple[str, ...] = (),
        limit: int = 0,
        exclude: tuple[str, ...] = (),
    ) -> list[Event]: ...

    def outcomes(self) -> dict[str, int]: ...

    def close(self) -> None: ...


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

    def flip(
        self, split_bp: int, champion_slot: int, has_challenger: bool, shadow: bool = False
    ) -> None:
        self.control.flip(split_bp, champion_slot, has_challenger, shadow)

    def slot_model(self, slot: int) -> int:
        return self.control.slot_model(slot)

    def load_slot(self, slot: int, version: int) -> None:
        self.control.load_slot(slot, version)

    def loaded_everywhere(self, slot: int) -> bool:
        return self.control.loaded_everywhere(slot, self.stale_after_s)

    def breaches(self, rollout_id: str) -> list[Result]:
        return []
