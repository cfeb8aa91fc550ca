"""The local model registry: a directory of ONNX files and a small SQLite table.

Registering validates the model (it must load and pass the probe), copies it
into the registry directory under its version, and records it; the first model
of an empty registry becomes the champion. Candidates waiting for a rollout are
`queued`, in the order they were queued (the release train: the evaluator starts
the first when no rollout runs). `open_registry` picks the backend `[registry]`
names: this one, or MLflow's (router/mlflow_registry.py), which keeps its local
copies here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.models import Model, ModelError

if TYPE_CHECKING:
    from router.config import Config
    from router.mlflow_registry import MlflowRegistry


class Status(StrEnum):
    CANDIDATE = "candidate"
    CHALLENGER = "challenger"
    CHAMPION = "champion"
    FAILED = "failed"
    RETIRED = "retired"
    QUEUED = "queued"  # a candidate waiting for the running rollout to end


@dataclass(frozen=True)
class ModelRecord:
    version: int
    name: str
    file: str
    sha256: str
    features: tuple[str, ...]
    status: Status
    reason: str
    registered_at: float
    rollout_id: str = ""  # the rollout that gave it its status (challenger, failed, champion)
    queue_seq: int = 0  # queued: its place in the queue (smaller goes first)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    features TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    rollout_id TEXT NOT NULL DEFAULT '',
    queue_seq INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added since the first schema: a registry made before them gains them on open.
_ADDED = (
    ("rollout_id", "TEXT NOT NULL DEFAULT ''"),
    ("queue_seq", "INTEGER NOT NULL DEFAULT 0"),
)
_COLUMNS = (
    "version, name, file, sha256, features, status, reason, registered_at, rollout_id, queue_seq"
)


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.dir = (state_dir / "models").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_dir / "registry.db", timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(models)")}
        for column, kind in _ADDED:
            if column not in have:
                self._db.execute(f"ALTER TABLE models ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._db.close()

    def register(self, source: Path) -> ModelRecord:
        source = source.resolve()
        model = Model(source)  # validates; raises ModelError naming the file
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            has_champion = self._db.execute(
                "SELECT 1 FROM models WHERE status = ?", (Status.CHAMPION.value,)
            ).fetchone()
            status = Status.CANDIDATE if has_champion else Status.CHAMPION
            cur = self._db.execute(
                "INSERT INTO models (name, file, sha256, features, status, registered_at,"
                " updated_at) VALUES (?, '', ?, ?, ?, ?, ?)",
                (model.name, digest, json.dumps(model.features), status.value, now, now),
            )
            version = int(cur.lastrowid or 0)
            file = f"{version}-{digest[:12]}.onnx"
            shutil.copyfile(source, self.dir / file)
            self._db.execute("UPDATE models SET file = ? WHERE version = ?", (file, version))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self.get(version)

    def mirror(self, record: ModelRecord, data: bytes) -> ModelRecord:
        """Keep a local copy of a model another registry (the fleet's) numbered: same
        version, verified against its sha256 and loaded before it is recorded."""
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ModelError(f"model {record.version}: bytes fail their sha256 {record.sha256}")
        file = f"{record.version}-{digest[:12]}.onnx"
        tmp = self.dir / f".{file}.tmp"
        tmp.write_bytes(data)
        try:
            Model(tmp, record.version)  # validates, as register() does
            tmp.replace(self.dir / file)
        finally:
            tmp.unlink(missing_ok=True)
        now = time.time()
        self._db.execute(
            "INSERT INTO models (version, name, file, sha256, features, status, reason,"
            " registered_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (version) DO UPDATE SET name = excluded.name, file = excluded.file,"
            " sha256 = excluded.sha256, features = excluded.features,"
            " status = excluded.status, reason = excluded.reason, updated_at = excluded.updated_at",
            (
                record.version,
                record.name,
                file,
                digest,
                json.dumps(record.features),
                record.status.value,
                record.reason,
                record.registered_at,
                now,
            ),
        )
        return self.get(record.version)

    def get(self, version: int) -> ModelRecord:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM models WHERE version = ?", (version,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no model version {version} in the registry")
        return _record(row)

    def all(self) -> list[ModelRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM models ORDER BY version").fetchall()
        return [_record(r) for r in rows]

    def with_status(self, status: Status) -> list[ModelRecord]:
        return [r for r in self.all() if r.status == status]

    def set_status(
        self, version: int, status: Status, reason: str = "", rollout_id: str = ""
    ) -> None:
        self._db.execute(
            "UPDATE models SET status = ?, reason = ?, rollout_id = ?, queue_seq = 0,"
            " updated_at = ? WHERE version = ?",
            (status.value, reason, rollout_id, time.time(), version),
        )

    # -- the queue --------------------------------------------------------------------------------
    def queue(self, version: int, *, replace: bool = False, reason: str = "") -> list[int]:
        """Queue a candidate behind the others (or, with `replace`, in place of every queued
        one, which go back to candidates). Returns the versions it replaced. A version that
        is not a candidate (or already queued) raises ValueError."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            record = self.get(version)
            if record.status not in (Status.CANDIDATE, Status.QUEUED):
                raise ValueError(
                    f"model {version} is {record.status.value}: only a candidate can be queued"
                )
            replaced: list[int] = []
            if replace:
                replaced = [r.version for r in self.queued() if r.version != version]
                self._db.execute(
                    "UPDATE models SET status = ?, reason = ?, queue_seq = 0, updated_at = ?"
                    " WHERE status = ? AND version != ?",
                    (
                        Status.CANDIDATE.value,
                        f"replaced in the queue by {version}",
                        time.time(),
                        Status.QUEUED.value,
                        version,
                    ),
                )
            if record.status != Status.QUEUED:
                (last,) = self._db.execute("SELECT MAX(queue_seq) FROM models").fetchone()
                self._db.execute(
                    "UPDATE models SET status = ?, reason = ?, queue_seq = ?, updated_at = ?"
                    " WHERE version = ?",
                    (Status.QUEUED.value, reason, int(last or 0) + 1, time.time(), version),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return replaced

    def queued(self) -> list[ModelRecord]:
        """The queue, first to start first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM models WHERE status = ? ORDER BY queue_seq, version",
            (Status.QUEUED.value,),
        ).fetchall()
        return [_record(r) for r in rows]

    def path_of(self, record: ModelRecord) -> Path:
        """The model file, refusing anything that resolves outside the registry."""
        path = (self.dir / record.file).resolve()
        if path.parent != self.dir:
            raise ModelError(f"{path}: outside the registry directory {self.dir}")
        return path

    def load(self, version: int) -> Model:
        record = self.get(version)
        return Model(self.path_of(record), version)


def _record(row: tuple[Any, ...]) -> ModelRecord:
    version, name, file, sha, features, status, reason, registered, rollout_id, seq = row
    return ModelRecord(
        int(version),
        name,
        file,
        sha,
        tuple(json.loads(features)),
        Status(status),
        reason,
        registered,
        rollout_id,
        int(seq),
    )


def open_registry(config: Config) -> Registry | MlflowRegistry:
    """The registry `[registry] backend` names, over the state directory's local copies."""
    if config.registry.backend == "mlflow":
        from router.mlflow_registry import MlflowRegistry

        return MlflowRegistry(config.registry, config.state_path)
    return Registry(config.state_path)
