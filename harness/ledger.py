"""What the server recorded of its rollouts, read from its state directory's journal.

The release train's legs follow each other on the evaluator's own clock: a broken candidate
can be pulled within a second of starting, and the next one starts on the following tick.
`/status` shows only the current or last rollout, so a watcher that samples it can miss a
whole leg when its own process is slow to get the CPU. The journal (`rollouts.db`, SQLite
in WAL mode, read here while the evaluator writes it) keeps every rollout and its events,
so the train waits on it: for state that stays, never for a moment it must not miss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrails.rollouts import EventKind, Journal, Rollout
from guardrails.view import event_brief


class Ledger:
    def __init__(self, state_dir: Path) -> None:
        self.journal = Journal(state_dir)

    def close(self) -> None:
        self.journal.close()

    def of(self, version: int) -> Rollout | None:
        """The latest rollout of challenger `version`, if one has started."""
        mine = [r for r in self.journal.all() if r.challenger == version]
        return mine[-1] if mine else None

    def until(
        self,
        version: int,
        done: Callable[[Rollout], bool],
        deadline: float,
        on_wait: Callable[[], None] | None = None,
    ) -> Rollout:
        """Until version `version`'s rollout exists and satisfies `done`; `on_wait` runs
        between reads (progress display). TimeoutError names what the journal holds."""
        while True:
            r = self.of(version)
            if r is not None and done(r):
                return r
            if time.monotonic() >= deadline:
                held = ", ".join(f"v{x.challenger} {x.state.value}" for x in self.journal.all())
                raise TimeoutError(
                    f"version {version}'s rollout did not reach the state waited for in time;"
                    f" the journal holds: {held or 'no rollout'}"
                )
            if on_wait is not None:
                on_wait()
            time.sleep(0.1)

    def final(self, r: Rollout) -> dict[str, Any]:
        """The part of a `/status` document a verdict reads, for rollout `r` once it ended:
        `last_rollout` and its events."""
        events = self.journal.events(r.id, exclude=(EventKind.METRICS,))
        return {
            "last_rollout": {
                "id": r.id,
                "challenger": str(r.challenger),
                "phase": r.phase,
                "state": r.state.value,
                "outcome": r.outcome,
                "reason": r.reason,
                "started": r.started,
                "ended": r.ended,
            },
            "events": [event_brief(x) for x in events],
        }

    @staticmethod
    def phases(r: Rollout) -> list[tuple[int, float]]:
        """Each phase `r` entered, with when, in seconds from its start."""
        return [(int(p["phase"]), round(float(p["entered"]) - r.started, 2)) for p in r.phases]
