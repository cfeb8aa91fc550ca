"""Faults of the state directory's storage (a full disk, a read-only remount, an I/O error),
told apart from programming errors, and the evaluator's answer to them.

The rollout journal, the registry and the admin mailbox are SQLite files in the state
directory. A decision the evaluator cannot record would be lost on a restart (the rollout
would resume as the journal last saw it), so while writes fail the evaluator *holds*: the
split goes to 100% champion, one alert goes out, and nothing is decided, but the ticks (and
the heartbeat) go on. Each held tick tries to record the hold; once a write succeeds the
evaluator finishes the transition that was cut short (a rollback or a promotion whose
records did not get written), saves the rollout as it stands and puts its split back.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guardrails.alerts import Alert
from guardrails.rollouts import EventKind, RolloutState

if TYPE_CHECKING:
    from guardrails.evaluator import Evaluator

_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
_SQLITE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


def is_fault(e: BaseException) -> bool:
    """Did storage fail (as opposed to the code: a bad SQL statement is not a fault)?"""
    if isinstance(e, sqlite3.OperationalError):
        name = getattr(e, "sqlite_errorname", "")
        return name.startswith(_SQLITE) or "disk is full" in str(e)
    return isinstance(e, OSError) and e.errno in _ERRNOS


@dataclass
class Hold:
    """The evaluator's hold on a storage fault (`reason` is None when not holding)."""

    reason: str | None = None
    since: float = 0.0  # steady clock
    since_wall: float = 0.0
    holds: int = 0  # how many times storage failed and the evaluator held
    # The transition whose records a fault cut short, to finish once writes succeed.
    unfinished: Callable[[], None] | None = field(default=None, repr=False)

    def enter(self, error: BaseException, steady_now: float, wall_now: float) -> bool:
        """Start holding (True), or go on holding (False) after another failed write."""
        first = self.reason is None
        self.reason = f"{type(error).__name__}: {error}"
        if first:
            self.since, self.since_wall = steady_now, wall_now
            self.holds += 1
            print(
                f"rampart evaluator: state directory storage failed ({self.reason}); "
                "holding 100% champion until a write succeeds",
                file=sys.stderr,
                flush=True,
            )
        return first

    def leave(self, steady_now: float) -> float:
        """Stop holding; the seconds held."""
        held = steady_now - self.since
        print(
            f"rampart evaluator: storage writable again after {held:.0f} s; resuming",
            file=sys.stderr,
            flush=True,
        )
        self.reason = None
        return held


def hold(ev: Evaluator, error: Exception) -> None:
    """Storage failed in this tick: 100% champion first, then (once) say so."""
    word = ev.serving.word()
    ev.serving.flip(0, word.champion_slot, word.has_challenger)
    r, now = ev.rollout, ev.durations.wall_now
    if ev.hold.enter(error, ev.durations.steady_now, now) and r and r.state.active:
        label = ev.label
        detail = f"state directory storage failed ({ev.hold.reason}); 100% champion"
        ev.alerter.send(
            Alert(
                "held",
                r.id,
                r.phase,
                label(r.challenger),
                label(r.champion),
                detail=detail,
                at=now,
            )
        )


def resume(ev: Evaluator) -> bool:
    """Record the hold; while that write fails the hold goes on (it raises). Then finish
    what the fault cut short and put the rollout back as it stands; True."""
    r, now = ev.rollout, ev.durations.wall_now
    held = ev.durations.steady_now - ev.hold.since
    data = {"reason": ev.hold.reason, "held_s": held, "since": ev.hold.since_wall}
    ev.journal.append(r.id if r else "-", EventKind.HELD, r.phase if r else 0, data, now)
    if ev.hold.unfinished is not None:
        ev.hold.unfinished()
    r = ev.rollout
    if r is not None and r.state.active:
        ev.journal.save(r, with_baseline=r.baseline is not None)
        if r.state != RolloutState.LOADING:
            champion_slot = ev.serving.word().champion_slot
            split = ev.policy.phase(r.phase).split_bp
            ev.serving.flip(split, champion_slot, True, r.phase == 0)
    ev.hold.leave(ev.durations.steady_now)
    return True
