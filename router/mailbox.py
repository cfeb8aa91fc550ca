"""The admin mailbox: workers queue rollout commands; the evaluator applies them.

Workers never change the split themselves (the control word has one writer).
An admin request becomes a row here; the evaluator takes it on its next tick
and writes back the outcome, which the worker returns to the caller.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any


class Command(StrEnum):
    """What an admin may ask of the rollout (`POST /admin/rollout/<command>`)."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL,
    result TEXT
);
"""


class MailboxUnavailable(RuntimeError):
    """A command could not be queued: the state directory cannot be written (full,
    read-only, failing) or stayed locked. The caller answers 503; nothing was queued."""


class AdminMailbox:
    def __init__(self, state_dir: Path) -> None:
        # Workers call it from a thread (never on the event loop): one connection, one lock.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            state_dir / "commands.db", timeout=10, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def submit(self, kind: Command, payload: dict[str, Any]) -> int:
        try:
            with self._lock:
                cur = self._db.execute(
                    "INSERT INTO commands (kind, payload, created_at) VALUES (?, ?, ?)",
                    (kind.value, json.dumps(payload), time.time()),
                )
        except sqlite3.OperationalError as e:
            raise MailboxUnavailable(f"cannot queue the command: {e}") from e
        return int(cur.lastrowid or 0)

    def result(self, command_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM commands WHERE id = ? AND done_at IS NOT NULL", (command_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def pending(self) -> list[tuple[int, Command, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT id, kind, payload FROM commands WHERE done_at IS NULL ORDER BY id"
        ).fetchall()
        return [(int(i), Command(k), json.loads(p)) for i, k, p in rows]

    def finish(self, command_id: int, result: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE commands SET done_at = ?, result = ? WHERE id = ?",
            (time.time(), json.dumps(result), command_id),
        )
