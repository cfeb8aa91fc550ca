"""A per-worker rate cap for work the hot path hands off (paired scoring, shadow copies):
a token bucket of one second's worth, refilled from the clock on each take. No thread,
no timer; a take is a clock read and a few float operations."""

from __future__ import annotations

import time

_perf_ns = time.perf_counter_ns


class RateCap:
    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._per_ns = per_s / 1e9
        self._burst = max(1.0, per_s)  # a second's worth at once
        self._tokens = self._burst
        self._last_ns = _perf_ns()

    def take(self) -> bool:
        """One more now, if the cap allows it."""
        now = _perf_ns()
        tokens = min(self._burst, self._tokens + (now - self._last_ns) * self._per_ns)
        self._last_ns = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
