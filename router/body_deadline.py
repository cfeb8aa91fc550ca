"""Bodies that stop arriving: a deadline from a request's headers to its body's last byte.

A client that sends the headers and then the body slowly, or not at all, holds a request
(and its connection) open for as long as it likes; uvicorn has no such timeout. As nginx's
`client_body_timeout` does, the request is then answered 408 with `Connection: close`
(reason `body_timeout`, counted). Arming an asyncio timer per request costs microseconds
on the hot path; here a request only enters and leaves a dict (0.60 µs), and the worker's
ticker cancels the reads that are past their deadline, so a deadline is kept to within one
`ticker_s`.
"""

from __future__ import annotations

import asyncio
import time

_perf_ns = time.perf_counter_ns
_current_task = asyncio.current_task


class BodyDeadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.timeout_ns = int(timeout_s * 1e9)
        self._reading: dict[asyncio.Task[object] | None, int] = {}  # task -> deadline ns
        self._expired: set[asyncio.Task[object]] = set()

    def enter(self) -> asyncio.Task[object] | None:
        """This task starts reading a body; pass what this returns to `leave`."""
        task = _current_task()
        self._reading[task] = _perf_ns() + self.timeout_ns
        return task

    def leave(self, task: asyncio.Task[object] | None) -> None:
        self._reading.pop(task, None)

    def expired(self, task: asyncio.Task[object] | None) -> bool:
        """Whether a CancelledError in `task` was this deadline (then the task goes on,
        to answer 408) rather than a real cancellation (shutdown, a disconnect)."""
        if task is None or task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def sweep(self) -> int:
        """Cancel the reads past their deadline (the ticker's job); how many."""
        now = _perf_ns()
        late = [t for t, deadline in self._reading.items() if deadline < now and t is not None]
        for task in late:
            del self._reading[task]
            self._expired.add(task)
            task.cancel()
        return len(late)
