"""The evaluator's view of the rollout, handed to the workers as a JSON file.

The evaluator computes the guardrails once a tick and writes `status.json` in the
state directory (write to a temporary file, then rename: readers see the old or
the new file, never half of one). Workers merge it into `/status`, `/metrics` and
the dashboard without importing evaluator code. Readers cache by modification
time, so a poll costs one `stat` when nothing changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILENAME = "status.json"


def write(state_dir: Path, status: dict[str, Any]) -> None:
    path = state_dir / FILENAME
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}")
    tmp.write_text(json.dumps(status, separators=(",", ":"), allow_nan=False))
    os.replace(tmp, path)


class StatusReader:
    """Reads the evaluator's status file, re-parsing only when it changed."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME
        self._mtime_ns = -1
        self._status: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
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
