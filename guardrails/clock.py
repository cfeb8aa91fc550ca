"""Durations for rollout decisions, on a clock that setting the time cannot move.

A rollout's times are recorded on the wall clock: they go to the journal and the event log,
are shown in /status and reports, and must survive a restart (and, in fleet mode, cross
hosts). A duration read off the wall clock jumps when the clock is set: an hour forward
would end a phase's minimum early, an hour back would stretch it. So each recorded start is
anchored to the monotonic clock, and "how long since" is read there:

- a start set in this process is anchored, exactly, at the tick that set it;
- a start read back from the journal (a restart, a new fleet leader) is anchored once, by
  the wall clock, the only clock that survives a restart; never to the future, so a clock
  set back across a restart lengthens the phase rather than skipping it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class Durations:
    def __init__(self, steady: Clock = time.monotonic) -> None:
        self.steady = steady
        self.wall_now = 0.0
        self.steady_now = 0.0
        self._anchors: dict[float, float] = {}  # recorded start -> steady time it began

    def tick(self, wall_now: float) -> float:
        """Read both clocks for this tick; the steady reading is returned."""
        self.wall_now, self.steady_now = wall_now, self.steady()
        return self.steady_now

    def since(self, start: float) -> float:
        """Seconds from the recorded (wall-clock) `start` to this tick, on the steady clock."""
        anchor = self._anchors.get(start)
        if anchor is None:
            anchor = self._anchors[start] = self._anchor(start)
        return self.steady_now - anchor

    def keep(self, *starts: float) -> None:
        """Anchor `starts` (those set this tick, to this tick) and forget every other."""
        self._anchors = {s: self._anchors.get(s, self._anchor(s)) for s in starts}

    def _anchor(self, start: float) -> float:
        return self.steady_now - max(0.0, self.wall_now - start)
