"""The status document: its schema, and how it travels from the evaluator to the workers.

The evaluator builds an `EvaluatorStatus` (`guardrails.view.status`) and writes it to
`status.json` in the state directory, in place under a seqlock in the control block
(`status_seq`, odd while writing): readers see a whole document, never half of one, and
re-read the file only when the sequence moved. Building and writing it costs more than
deciding the tick, and most ticks nobody reads it, so it is published on demand:

- a worker that serves `/status` or `/metrics` stamps `status_wanted_ns` in its own slab
  (`StatusReader.want`; every stamp is on the heartbeat's clock, `router.control.beat_ns`);
- each tick the evaluator's `Publisher` writes the document only while some worker
  wanted it within the last `LEASE_S`, then stamps `status_ns` (when) and `status_word`
  (the control word in force) in the control block;
- the worker answers once the document is fresh: published within one tick and under
  the control word in force (a split flip, a rollback, shows on the next GET). The first
  read after a quiet spell waits for the next tick; a poller keeps the lease and waits
  for nothing. With no evaluator beating, it answers the last document at once.

Workers add what only they know (`WorkerStatus`: the models each arm runs, live
counters, rejects) and serve the whole `Status` at `GET /status`; `/metrics` and the
dashboard read the same fields.

The fields named in DESIGN.md's interface list (`phase`, `split_bp`, `models`,
`guardrails`, `rollout`, `fleet`) are a contract; the rest may grow.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypedDict

import orjson

from router.control import beat_ns
from router.shared_memory import SharedMemory

FILENAME = "status.json"
TICK_S = 1.0  # the evaluator's tick (guardrails.process): how old a fresh document may be
# How long one read keeps the evaluator publishing every tick: the dashboard and
# `rampart status --watch` poll each second and so never wait.
LEASE_S = 5.0
POLL_S = 0.01  # how often a waiting reader looks at the control block

GuardrailState = Literal["pass", "fail", "waiting"]


class Guardrail(TypedDict):
    name: str
    value: float | str | None
    threshold: str
    state: GuardrailState
    phase: int
    detail: str


class RolloutInfo(TypedDict):
    id: str
    challenger: str
    champion: str
    phase: int
    state: str
    started: float
    phase_started: float
    time_in_phase_s: float
    phase_min_s: float
    phase_max_s: float
    paused: bool
    time_scale: float
    outcome: str
    reason: str
    ended: float | None


class PhaseInfo(TypedDict):
    phase: int
    name: str  # "shadow" for phase 0, else the number
    split_bp: int
    min_s: float
    max_s: float
    min_impressions: int
    entered: float | None
    exited: float | None
    result: str


class FleetHost(TypedDict):
    id: str
    age_s: float  # since the store last heard from it
    split_bp: int | None  # the challenger share in force on that host


class LocalBreach(TypedDict):
    rollout: str
    guardrail: str
    value: float | str | None
    threshold: str
    at: float


class FleetInfo(TypedDict, total=False):
    name: str
    leader: str | None  # host id
    hosts: list[FleetHost]
    store: Literal["ok", "unreachable"]
    unreachable_since: float | None
    host: str  # the host that answered
    local_breach: LocalBreach | None  # this host pulled the challenger on its own evidence


class EvaluatorInfo(TypedDict):
    pid: int
    updated: float
    tick_ms: float


class EvaluatorStatus(TypedDict, total=False):
    """What the evaluator publishes each tick."""

    phase: int  # 0: no rollout, or the shadow phase of one (phase_name says which); 1-5
    phase_name: str  # "none" (no rollout), "shadow" (phase 0), "1"-"5"
    state: str  # "idle" or a rollout state
    split_bp: int  # the challenger's share in force
    rollout: RolloutInfo | None  # the current rollout, or None
    last_rollout: RolloutInfo | None
    phases: list[PhaseInfo]
    guardrails: list[Guardrail]
    next: str  # what must happen for the next step
    comparison: dict[str, Any] | None
    # What the guardrails judged, per arm (the champion's since the rollout started; in
    # fleet mode summed over every host): requests, errors, impressions, clicks.
    evidence: dict[str, dict[str, int]]
    series: list[dict[str, Any]]
    calibration: dict[str, Any]
    latency: dict[str, Any] | None
    segments: list[dict[str, Any]]
    events: list[dict[str, Any]]
    counters: dict[str, int]
    evaluator: EvaluatorInfo
    early_rollback: str
    fleet: FleetInfo  # fleet mode only


class ModelInfo(TypedDict):
    version: str
    name: str
    label: str
    features: list[str]


class ArmCounts(TypedDict):
    requests: int
    predictions: int
    errors: int
    fallbacks: int
    impressions: int
    clicks: int


class ShadowStatus(TypedDict):
    """The shadow phase as the answering worker sees it (router.shadow)."""

    active: bool  # copies of champion requests go to the challenger now
    runs: int  # challenger runs on copies recorded, every worker (the challenger's model)
    dropped: int  # copies not judged (a full queue, a starved run), every worker
    queued: int  # copies in this worker's queue (the one running included)
    sample: float
    max_per_s: float  # per worker
    queue: int  # copies that may wait per worker, besides the one running


class WorkerStatus(TypedDict):
    """What the answering worker adds."""

    effective_split_bp: int  # 0 while the heartbeat is stale or the challenger is loading
    stale: bool
    models: dict[str, ModelInfo | None]  # "champion", "challenger"
    arms: dict[str, ArmCounts]
    rejected: dict[str, int]
    workers: int
    shadow: ShadowStatus | None  # None: no [phases.0]


class Status(EvaluatorStatus, WorkerStatus):
    """`GET /status`."""


IDLE: EvaluatorStatus = {
    "phase": 0,
    "phase_name": "none",
    "state": "idle",
    "guardrails": [],
    "rollout": None,
}


def encode(status: EvaluatorStatus) -> bytes:
    """JSON without NaN or infinity (those become null)."""
    return orjson.dumps(status, option=orjson.OPT_SERIALIZE_NUMPY)


class Publisher:
    """The evaluator's side: writes the document while someone reads it."""

    def __init__(self, state_dir: Path, shm: SharedMemory) -> None:
        self.path = state_dir / FILENAME
        self.shm = shm

    def wanted(self) -> bool:
        """Whether a worker read the status within the last LEASE_S."""
        last = int(self.shm.slabs["status_wanted_ns"].max())
        return beat_ns() - last < LEASE_S * 1e9

    def publish(self, build: Callable[[], EvaluatorStatus], force: bool = False) -> bool:
        """Build and write the document if it is wanted (or `force`); True if written.

        Written in place under a seqlock, not to a temporary file renamed over the old
        one: on ext4 that rename flushes the new file's data to disk (auto_da_alloc),
        milliseconds a tick on a busy disk. Readers check `status_seq` around their read."""
        if not (force or self.wanted()):
            return False
        ctrl = self.shm.control
        word = self.shm.control_word()  # before building: the document shows at least this
        data = encode(build())
        writing = (int(ctrl["status_seq"]) + 1) | 1  # odd (a writer killed mid-write left odd)
        ctrl["status_seq"] = writing
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        ctrl["status_word"] = word
        ctrl["status_ns"] = beat_ns()
        ctrl["status_seq"] = writing + 1
        return True


class StatusReader:
    """The worker's side: the evaluator's latest document, re-read only when a new one
    was published; `fresh()` first asks for a fresh one and waits for it."""

    def __init__(self, state_dir: Path, shm: SharedMemory, slab: int) -> None:
        self.path = state_dir / FILENAME
        self.shm = shm
        self.slab = slab
        self._seq = -1
        self._status: EvaluatorStatus | None = None

    def want(self) -> None:
        self.shm.slabs[self.slab]["status_wanted_ns"] = beat_ns()

    def is_fresh(self) -> bool:
        """Published within one tick under the control word in force, or no evaluator
        beating (nothing fresher will come)."""
        ctrl = self.shm.control
        now = beat_ns()
        if now - int(ctrl["heartbeat_ns"]) > 2 * TICK_S * 1e9:
            return True
        return (
            now - int(ctrl["status_ns"]) <= TICK_S * 1e9
            and int(ctrl["status_word"]) == self.shm.control_word()
        )

    async def fresh(self, timeout_s: float = 2 * TICK_S) -> EvaluatorStatus | None:
        """The document once fresh (at most `timeout_s` of waiting), read off the event loop."""
        self.want()
        deadline = time.monotonic() + timeout_s
        while not self.is_fresh() and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return await asyncio.to_thread(self.read)

    def read(self) -> EvaluatorStatus | None:
        """The latest whole document (None before the first); while one is being written,
        the previous."""
        ctrl = self.shm.control
        seq = int(ctrl["status_seq"])
        if seq == self._seq or seq & 1:
            return self._status
        try:
            data = self.path.read_bytes()
            if int(ctrl["status_seq"]) != seq:  # rewritten while we read
                return self._status
            self._status = orjson.loads(data)
        except (OSError, ValueError):
            return self._status
        self._seq = seq
        return self._status
