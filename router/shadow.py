"""Phase 0, shadow: the challenger scores copies of live requests off the response path.

In the shadow phase (`[phases.0]`) the split stays 0 and every answer is the champion's.
Each worker copies a sampled, rate-capped share of the rows it answers into a bounded
queue; a thread of its own runs the challenger on them, discards the answers, and records
what the run did (latency, errors, NaN or out-of-range predictions, the prediction
histogram) in the challenger slot of this worker's slab. The evaluator judges that with the
phase-1 checks that need no clicks (guardrails.shadow).

Bounded: a copy that finds the queue full is dropped and counted (`Counter.SHADOW_DROPPED`),
never waited for, so `/predict` never waits on the challenger. The latency recorded is the
run's CPU time, so the thread's low priority does not make the challenger look slow; a run
cut at DEADLINE_FACTOR timeouts of wall time within the timeout's CPU time starved, and is
dropped (counted) rather than judged. A thread, not a task on the
event loop: a challenger run on the loop would hold every request behind it for the run's
length, while onnxruntime releases the GIL for the run, so the thread's work overlaps the
loop's. The thread runs at a lower CPU priority, so on a busy machine the requests come
first and the queue, not the answers, takes the wait.

One writer per slab still holds: the recording kernels hold the GIL for the whole update,
so this thread and the event loop never add to the same counter at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

import numpy as np

from router import recording
from router.codec import Rejected, named_rows
from router.config import ConfigError, typed_section
from router.control import shadow_of
from router.deadline import RunDeadline
from router.layout import Counter
from router.rate_cap import RateCap
from router.snapshot import SlotTotals
from router.status import ShadowStatus

if TYPE_CHECKING:
    from router.models import Model
    from router.worker import Worker

SECTION = "phases.0"
NICENESS = 10  # the shadow thread's nice value above the worker's: requests come first
MAX_QUEUE = 100_000
# A run is cut (router.deadline) at this many challenger timeouts of wall time: the thread
# is never held long by one copy, and a run slowed only by its low priority is not cut.
DEADLINE_FACTOR = 10
_cpu_ns = time.thread_time_ns
_random = random.random
_sleep = time.sleep
_ERR_RAISED = int(Counter.ERR_RAISED)
_ERR_TIMEOUT = int(Counter.ERR_TIMEOUT)
_ERR_FEATURES = int(Counter.ERR_FEATURES)


def phase_name(phase: int, active: bool = True) -> str:
    """How a phase is shown: "shadow" for phase 0 of a rollout, "none" without one."""
    if not active:
        return "none"
    return "shadow" if phase == 0 else str(phase)


@dataclass(frozen=True)
class ShadowConfig:
    """`[phases.0]`: the phase's duration and sample, and what each worker copies."""

    min_hours: float = 1.0
    max_hours: float = 24.0
    # Challenger runs on copies before advancing (x [rollout] sample_scale), on top of the
    # guardrails' own evidence minimums.
    min_requests: int = 2_000
    sample: float = 1.0  # share of the champion's requests copied
    max_per_s: float = 100.0  # copies per second, per worker
    queue: int = 64  # copies waiting per worker, besides the one running; full: drop

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> ShadowConfig | None:
        """`[phases.0]` of the config file, or None when it has none (no shadow phase)."""
        phases = raw.get("phases", {})
        if not isinstance(phases, dict) or "0" not in phases:
            return None
        shadow: ShadowConfig = typed_section(cls, SECTION, phases["0"])
        shadow.validate()
        return shadow

    def validate(self) -> None:
        if not 0 <= self.min_hours <= self.max_hours:
            raise ConfigError(f"[{SECTION}] needs 0 <= min_hours <= max_hours")
        if self.min_requests < 0:
            raise ConfigError(f"[{SECTION}] min_requests must not be negative")
        if not 0 < self.sample <= 1:
            raise ConfigError(f"[{SECTION}] sample must be in (0, 1], got {self.sample}")
        if not self.max_per_s > 0:
            raise ConfigError(f"[{SECTION}] max_per_s must be positive, got {self.max_per_s}")
        if not 1 <= self.queue <= MAX_QUEUE:
            raise ConfigError(f"[{SECTION}] queue must be in [1, {MAX_QUEUE}], got {self.queue}")


def _lower_priority() -> None:
    """Raise this thread's nice value (Linux: a thread id is a PRIO_PROCESS target)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)


class Shadow:
    """One worker's shadow scoring: `offer` on the event loop, the runs on a thread.

    `offered` is written only by the event loop and `done` only by the thread, so the queue
    length (their difference) needs no lock.
    """

    def __init__(self, config: ShadowConfig, worker: Worker) -> None:
        self.config = config
        self.worker = worker
        self.sample = config.sample
        self.cap = RateCap(config.max_per_s)  # at most a second's copies at once
        self.capacity = config.queue
        self.offered = 0
        self.done = 0
        self.closed = False
        self.delay_s = worker.challenger_delay_s  # [faults]: every challenger call
        self.delay_ns = int(self.delay_s * 1e9)
        self.deadline = RunDeadline(DEADLINE_FACTOR * worker.serve.challenger_timeout_ms / 1000)
        self._jobs: SimpleQueue[tuple[np.ndarray, list[Any] | None, int] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rampart-shadow", daemon=True)
        self._thread.start()

    # -- the event loop -------------------------------------------------------------------
    def offer(self, x: np.ndarray, named: list[Any] | None, cell: int) -> None:
        """A champion-answered request's rows: copy them for the challenger, or not (the
        sample, the rate cap), or drop them (the queue is full). Never waits."""
        if self.sample < 1.0 and _random() >= self.sample:
            return
        if not self.cap.take():
            return
        if self.closed:
            return
        if self.offered - self.done > self.capacity:  # `queue` waiting besides the one running
            worker = self.worker
            recording.bump(worker.slot_addr[worker.route.challenger], Counter.SHADOW_DROPPED)
            return
        self.offered += 1
        # The arrays are the request's own (codec builds new ones), never reused: no copy.
        self._jobs.put((x, named, cell))

    def pending(self) -> int:
        return self.offered - self.done

    def status(self, challenger: SlotTotals) -> ShadowStatus:
        """`/status`'s view; `challenger` is the challenger slot summed over every worker.
        In the shadow phase every challenger request is a run on a copy."""
        active = self.worker.route.shadow
        return {
            "active": active,
            "runs": challenger.counter(Counter.REQUESTS) if active else 0,
            "dropped": challenger.counter(Counter.SHADOW_DROPPED),
            "queued": self.pending(),
            "sample": self.sample,
            "max_per_s": self.cap.per_s,
            "queue": self.capacity,
        }

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread after the copy it is running (waiting at most `timeout_s`;
        the copies still queued are dropped)."""
        self.closed = True
        self._jobs.put(None)
        self._thread.join(timeout_s)

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority()
        jobs = self._jobs
        while True:
            if jobs.empty():
                self.deadline.watch(False)  # its watchdog sleeps while nothing runs
            if (job := jobs.get()) is None:
                return
            self.deadline.watch(True)
            try:
                self._score(*job)
            except Exception as e:  # a bug here must not end shadow scoring for good
                print(f"rampart worker {os.getpid()}: shadow run failed: {e!r}", flush=True)
            finally:
                self.done += 1

    def _score(self, x: np.ndarray, named: list[Any] | None, cell: int) -> None:
        w = self.worker
        route = w.route
        slot = route.challenger
        model = w.models[slot]
        if not route.shadow or model is None or self.closed:
            return  # the shadow phase (or the worker) ended while this copy waited
        addr = w.slot_addr[slot]
        kind = 0
        out = None
        cut = False
        # The time recorded is this thread's CPU time (onnxruntime runs a session with one
        # intra-op thread on the caller's thread), plus any injected delay: what the run
        # costs, not how long a thread at a lower priority waited for a core.
        start = _cpu_ns()
        inputs = self._inputs(model, slot, x, named)
        if inputs is None:
            kind = _ERR_FEATURES
        else:
            options = self.deadline.begin(time.perf_counter_ns())
            try:
                if self.delay_s:
                    _sleep(self.delay_s)
                out = model.predict(inputs, options)
            except Exception:
                kind = _ERR_RAISED
            cut = self.deadline.end()
        elapsed = _cpu_ns() - start + self.delay_ns
        # Recorded only if this is still the shadow phase of the same model: a run that
        # outlasts the phase must not count as a request the split assigned in phase 1.
        if not shadow_of(w.shm.control_word()) or w.models[slot] is not model:
            return
        if elapsed > w.timeout_ns:
            kind = _ERR_TIMEOUT
        elif cut:  # cut at the wall deadline, yet within the timeout: starved, not slow
            recording.bump(addr, Counter.SHADOW_DROPPED)
            return
        if kind:
            recording.bump(addr, kind)
            error = 1
        else:
            assert out is not None
            # A wrong size or a NaN / out-of-range value (record_predictions counts which).
            error = int(out.size != x.shape[0] or recording.record_predictions(addr, out) != 0)
        recording.record_request(addr, elapsed // 1000, cell, error)

    def _inputs(
        self, model: Model, slot: int, x: np.ndarray, named: list[Any] | None
    ) -> np.ndarray | None:
        """The rows in the challenger's feature order, or None when it cannot take them."""
        w = self.worker
        if named is not None:
            try:
                return named_rows(named, model.features, w.known_features, len(named))
            except Rejected:
                return None
        cols = w.columns[slot]
        if cols is None:
            return None
        return x if len(cols) == 0 else x[:, cols]  # empty: worker.SAME_ORDER
