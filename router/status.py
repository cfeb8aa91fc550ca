"""The status document: its schema, and how it travels from the evaluator to the workers.

The evaluator builds an `EvaluatorStatus` once a tick (`guardrails.view.status`)
and writes it to `status.json` in the state directory (a temporary file, then a
rename: readers see the old or the new document, never half of one). Workers add
what only they know (`WorkerStatus`: the models each arm runs, live counters,
rejects) and serve the whole `Status` at `GET /status`; `/metrics` and the
dashboard read the same fields. Readers cache by modification time, so a poll
costs one `stat` when nothing changed.

The fields named in DESIGN.md's interface list (`phase`, `split_bp`, `models`,
`guardrails`, `rollout`, `fleet`) are a contract; the rest may grow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypedDict

FILENAME = "status.json"

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

    phase: int  # 0: no rollout, 1-5
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


class WorkerStatus(TypedDict):
    """What the answering worker adds."""

    effective_split_bp: int  # 0 while the heartbeat is stale or the challenger is loading
    stale: bool
    models: dict[str, ModelInfo | None]  # "champion", "challenger"
    arms: dict[str, ArmCounts]
    rejected: dict[str, int]
    workers: int


class Status(EvaluatorStatus, WorkerStatus):
    """`GET /status`."""


IDLE: EvaluatorStatus = {"phase": 0, "state": "idle", "guardrails": [], "rollout": None}


def write(state_dir: Path, status: EvaluatorStatus) -> None:
    path = state_dir / FILENAME
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(status, separators=(",", ":"), allow_nan=False))
    except OSError:  # a full disk: leave no half-written file holding blocks
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


class StatusReader:
    """Reads the evaluator's status file, re-parsing only when it changed."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME
        self._mtime_ns = -1
        self._status: EvaluatorStatus | None = None

    def read(self) -> EvaluatorStatus | None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime != self._mtime_ns:
            try:
                self._status = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._status  # replaced while reading: keep the previous view
            self._mtime_ns = mtime
        return self._status
