"""The fleet's model registry in the store: model bytes by sha256, records by version.

A part of `guardrails.fleet_store.FleetStore` (which it is mixed into), kept apart
because it is its own concept: `rampart models register --fleet` writes here, and every
host reads a version it lacks from here.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.commands.core import Script

from guardrails import fleet_records as records
from guardrails.fleet_records import StoreUnavailable


class FleetModels:
    """Registry methods of `FleetStore`; they use its connection and scripts."""

    _redis: redis.Redis
    _register_model: Script
    _set_status: Script
    _queue_model: Script

    if TYPE_CHECKING:  # FleetStore's

        def key(self, suffix: str) -> str: ...

        def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    def next_version(self) -> int:
        return int(self._call(self._redis.incr, self.key("model-seq")))

    def put_model(self, record: dict[str, Any], data: bytes) -> dict[str, Any]:
        """Register a model: its bytes under their sha256 (stored once), its record under a
        new version (or `record["version"]` if given and unused). Without a `status` it
        becomes the champion if the registry has none, else a candidate — in one script.
        Returns the stored record."""
        sha = hashlib.sha256(data).hexdigest()
        if record.get("sha256", sha) != sha:
            raise ValueError(f"record sha256 {record['sha256']} is not the data's {sha}")
        if not isinstance(record.get("name"), str) or not isinstance(record.get("features"), list):
            raise ValueError("a model record needs a 'name' (str) and 'features' (list)")
        stored = {k: v for k, v in record.items() if k not in ("version", "status", "reason")}
        stored.update(sha256=sha, registered_at=stored.get("registered_at", time.time()))
        version = record.get("version")
        keys = [self.key(k) for k in ("models", "model-status", "model-reason", "model-seq")]
        keys += [self.key(f"blob:{sha}"), self.key("created")]
        args = [
            json.dumps(stored),
            data,
            "" if version is None else str(int(version)),
            record.get("status", ""),
            record.get("reason", ""),
            secrets.token_hex(8),
        ]
        reply = self._call(self._register_model, keys, args)
        if reply is None:
            raise ValueError(f"model version {version} is already registered")
        status = reply[1].decode()
        return dict(stored, version=int(reply[0]), status=status, reason=args[4], rollout_id="",
                    queue_seq=0)  # fmt: skip

    _TABLES = ("models", "model-status", "model-reason", "model-rollout")

    def models(self) -> list[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=True)
        for k in self._TABLES:
            pipe.hgetall(self.key(k))
        pipe.zrange(self.key("queue"), 0, -1, withscores=True)
        entries, statuses, reasons, rollouts, queue = self._call(pipe.execute)
        seq = {v: int(score) for v, score in queue}
        return sorted(
            (
                records.model(v, r, statuses.get(v), reasons.get(v), rollouts.get(v), seq.get(v))
                for v, r in entries.items()
            ),
            key=lambda m: int(m["version"]),
        )

    def get_model(self, version: int) -> dict[str, Any]:
        pipe = self._redis.pipeline(transaction=True)
        v = str(int(version))
        for k in self._TABLES:
            pipe.hget(self.key(k), v)
        pipe.zscore(self.key("queue"), v)
        record, status, reason, rollout, seq = self._call(pipe.execute)
        if record is None:
            raise KeyError(f"no model version {version} in the fleet registry")
        return records.model(v.encode(), record, status, reason, rollout, seq)

    def queued_models(self) -> list[dict[str, Any]]:
        """The release train's queue, first to start first."""
        queued = [m for m in self.models() if m["status"] == "queued"]
        return sorted(queued, key=lambda m: (m["queue_seq"], m["version"]))

    def queue_model(self, version: int, *, replace: bool = False, reason: str = "") -> list[int]:
        """Queue a candidate behind the others (or, with `replace`, in place of every queued
        one, which go back to candidates). Returns the versions it replaced; a version that
        is not a candidate raises ValueError, an unknown one KeyError. Unfenced: the CLI
        queues, and the leader starts what is queued."""
        keys = [self.key(k) for k in ("models", "model-status", "model-reason", "queue")]
        keys.append(self.key("queue-seq"))
        args = [str(int(version)), "1" if replace else "", reason]
        reply = [x.decode() for x in self._call(self._queue_model, keys, args)]
        if reply[0] == "unknown":
            raise KeyError(f"no model version {version} in the fleet registry")
        if reply[0] == "refused":
            raise ValueError(f"model {version} is {reply[1]}: only a candidate can be queued")
        return [int(x) for x in reply[1:]]

    def model_bytes(self, sha256: str) -> bytes:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        data = self._call(self._redis.get, self.key(f"blob:{sha256}"))
        if data is None:
            raise KeyError(f"no model bytes with sha256 {sha256} in the fleet store")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreUnavailable(f"the fleet store's model bytes {sha256} fail their sha256")
        return bytes(data)

    def set_model_status(
        self, epoch: int | None, version: int, status: str, reason: str = "", rollout_id: str = ""
    ) -> bool:
        """Fenced by `epoch`; None (unfenced) is for the CLI's register path only."""
        return self.set_model_statuses(epoch, {version: (status, reason)}, rollout_id)

    def set_model_statuses(
        self, epoch: int | None, changes: dict[int, tuple[str, str]], rollout_id: str = ""
    ) -> bool:
        """Several status changes as one flip (a promotion: champion and retired), each
        recorded with the rollout that made it."""
        args: list[Any] = ["" if epoch is None else records.epoch(epoch), rollout_id]
        for version, (status, reason) in changes.items():
            args += [str(int(version)), records.id(status, "status"), reason]
        keys = [self.key(k) for k in ("epoch", *self._TABLES, "queue")]
        reply = self._call(self._set_status, keys, args)
        if isinstance(reply, bytes):
            raise KeyError(f"no model version {reply.decode()} in the fleet registry")
        return bool(reply)
