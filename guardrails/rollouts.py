"""Rollout state and the append-only event log, in SQLite in the state directory.

A rollout row holds what the evaluator needs to resume mid-phase after a restart
(phase, when it started, the champion's baseline counts); the events table is the
history a post-mortem is written from. The database refuses UPDATE and DELETE on
events, so the log stays append-only whatever code runs against it.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from router.snapshot import SlotTotals

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    challenger INTEGER NOT NULL,
    champion INTEGER NOT NULL,
    state TEXT NOT NULL,
    phase INTEGER NOT NULL,
    started REAL NOT NULL,
    phase_started REAL NOT NULL,
    ended REAL,
    outcome TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    paused INTEGER NOT NULL DEFAULT 0,
    phase_requests TEXT NOT NULL DEFAULT '[0, 0]',
    phases TEXT NOT NULL DEFAULT '[]',
    baseline BLOB
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    phase INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_rollout ON events (rollout_id, seq);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"""


class RolloutState(StrEnum):
    LOADING = "loading"  # challenger slot written, waiting for every worker to load it
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (RolloutState.LOADING, RolloutState.RUNNING, RolloutState.PAUSED)


class EventKind(StrEnum):
    """What an event-log record says happened."""

    STARTED = "started"
    PHASE = "phase"  # the first phase's split is in force
    ADVANCED = "advanced"
    PAUSED = "paused"
    RESUMED = "resumed"
    METRICS = "metrics"  # a periodic look at the evidence, for the post-mortem's plots
    ALERT = "alert"  # a delivery settled
    HELD = "held"  # storage failed: 100% champion until a write succeeded (data: held_s)
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"
    PROMOTED = "promoted"


@dataclass
class Rollout:
    id: str
    challenger: int
    champion: int
    state: RolloutState
    phase: int
    started: float
    phase_started: float
    ended: float | None = None
    outcome: str = ""
    reason: str = ""
    paused: bool = False
    phase_requests: list[int] = field(default_factory=lambda: [0, 0])
    phases: list[dict[str, Any]] = field(default_factory=list)
    baseline: SlotTotals | None = None


@dataclass(frozen=True)
class Event:
    seq: int
    rollout_id: str
    t: float
    kind: str
    phase: int
    data: dict[str, Any]


def pack_totals(totals: SlotTotals | None) -> bytes | None:
    if totals is None:
        return None
    buf = io.BytesIO()
    np.savez(buf, **{name: getattr(totals, name) for name in SlotTotals.__dataclass_fields__})
    return buf.getvalue()


def unpack_totals(blob: bytes | None) -> SlotTotals | None:
    if blob is None:
        return None
    with np.load(io.BytesIO(blob)) as data:
        return SlotTotals(**{name: data[name] for name in SlotTotals.__dataclass_fields__})


class Journal:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "rollouts.db"
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.last_seq = 0  # of the last event this process appended

    def close(self) -> None:
        self.db.close()

    def new_id(self, challenger: int, now: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        return f"r{stamp}-v{challenger}"

    def save(self, r: Rollout, *, with_baseline: bool = False) -> None:
        row = (
            r.challenger,
            r.champion,
            r.state.value,
            r.phase,
            r.started,
            r.phase_started,
            r.ended,
            r.outcome,
            r.reason,
            int(r.paused),
            json.dumps(r.phase_requests),
            json.dumps(r.phases),
        )
        self.db.execute(
            "INSERT INTO rollouts (id, challenger, champion, state, phase, started, phase_started,"
            " ended, outcome, reason, paused, phase_requests, phases)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, phase = excluded.phase,"
            " started = excluded.started, phase_started = excluded.phase_started,"
            " ended = excluded.ended,"
            " outcome = excluded.outcome, reason = excluded.reason, paused = excluded.paused,"
            " phase_requests = excluded.phase_requests, phases = excluded.phases",
            (r.id, *row),
        )
        if with_baseline:
            self.db.execute(
                "UPDATE rollouts SET baseline = ? WHERE id = ?", (pack_totals(r.baseline), r.id)
            )

    def get(self, rollout_id: str) -> Rollout:
        row = self.db.execute(_SELECT + " WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise KeyError(f"no rollout {rollout_id!r}")
        return _rollout(row)

    def active(self) -> Rollout | None:
        row = self.db.execute(
            _SELECT + " WHERE state IN ('loading', 'running', 'paused') ORDER BY started DESC"
        ).fetchone()
        return _rollout(row) if row else None

    def all(self) -> list[Rollout]:
        return [_rollout(r) for r in self.db.execute(_SELECT + " ORDER BY started")]

    def append(self, rollout_id: str, kind: str, phase: int, data: dict[str, Any], t: float) -> int:
        cur = self.db.execute(
            "INSERT INTO events (rollout_id, t, kind, phase, data) VALUES (?, ?, ?, ?, ?)",
            (rollout_id, t, kind, phase, json.dumps(data, default=jsonable)),
        )
        self.last_seq = int(cur.lastrowid or 0)
        return self.last_seq

    def events(
        self,
        rollout_id: str | None = None,
        kinds: tuple[str, ...] = (),
        limit: int = 0,
        exclude: tuple[str, ...] = (),
    ) -> list[Event]:
        sql = "SELECT seq, rollout_id, t, kind, phase, data FROM events"
        clauses, args = [], []
        if rollout_id is not None:
            clauses.append("rollout_id = ?")
            args.append(rollout_id)
        if kinds:
            clauses.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if exclude:
            clauses.append(f"kind NOT IN ({', '.join('?' * len(exclude))})")
            args.extend(exclude)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        if limit:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {int(limit)})"
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def outcomes(self) -> dict[str, int]:
        counts = dict(self.db.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state"))
        return {
            "rollbacks": int(counts.get("rolled_back", 0)),
            "promotions": int(counts.get("promoted", 0)),
            "stops": int(counts.get("stopped", 0)),
        }


_SELECT = (
    "SELECT id, challenger, champion, state, phase, started, phase_started, ended, outcome,"
    " reason, paused, phase_requests, phases, baseline FROM rollouts"
)


def _rollout(row: tuple[Any, ...]) -> Rollout:
    return Rollout(
        id=row[0],
        challenger=row[1],
        champion=row[2],
        state=RolloutState(row[3]),
        phase=row[4],
        started=row[5],
        phase_started=row[6],
        ended=row[7],
        outcome=row[8],
        reason=row[9],
        paused=bool(row[10]),
        phase_requests=json.loads(row[11]),
        phases=json.loads(row[12]),
        baseline=unpack_totals(row[13]),
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
