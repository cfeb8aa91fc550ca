"""The release train: candidates queued behind the running rollout, started one after another.

A candidate is queued by `rampart models register FILE --start` (or, with the MLflow
backend, by getting the `@challenger` alias); the queue lives with the registry (the local
registry's `queued` status and order, mirrored as MLflow tags). The evaluator asks `due()`
on every tick without a running rollout (a SQLite read, never MLflow) and starts what it
names; a rollout that ends (promoted, rolled back, stopped) thus hands over to the next
queued candidate on the following tick.

    Queueing       what a registry offers the train (router.registry.Registry, MlflowRegistry)
    ReleaseTrain   the evaluator's side: the next candidate, and one that cannot start
    enqueue        the CLI's side: queue a version, say where it stands
"""

from __future__ import annotations

from typing import Any, Protocol

from router.registry import ModelRecord, Status


class Queueing(Protocol):
    def queued(self) -> list[ModelRecord]: ...

    def queue(self, version: int, *, replace: bool = False, reason: str = "") -> list[int]: ...

    def set_status(
        self, version: int, status: Status, reason: str = "", rollout_id: str = ""
    ) -> None: ...


class ReleaseTrain:
    def __init__(self, registry: Queueing) -> None:
        self.registry = registry
        watch = getattr(registry, "watch", None)  # MLflow: its thread polls @challenger
        if watch is not None:
            watch()

    def due(self) -> int | None:
        """The first queued candidate, to start now that no rollout runs."""
        queued = self.registry.queued()
        return queued[0].version if queued else None

    def started(self, version: int, result: dict[str, Any]) -> None:
        """A queued candidate the evaluator could not start leaves the queue as failed (so
        the next one is not held up behind it forever), unless the registry has no champion
        to compare it with: then the queue waits for one."""
        if not result.get("ok") and result.get("error") != "no_champion":
            reason = f"could not start: {result.get('error')} {result.get('detail', '')}"
            self.registry.set_status(version, Status.FAILED, reason.strip())


def enqueue(registry: Queueing, version: int, *, replace: bool = False) -> str:
    """Queue `version`; a line saying where it stands (position 1 starts next)."""
    replaced = registry.queue(version, replace=replace)
    position = [r.version for r in registry.queued()].index(version) + 1
    text = f"model {version} queued at position {position}"
    if replaced:
        text += f" (replacing {', '.join(str(v) for v in replaced)})"
    return text
