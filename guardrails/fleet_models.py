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
        return dict(stored, version=int(reply[0]), status=reply[1].decode(), reason=args[4])

    def models(self) -> list[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=True)
        for k in ("models", "model-status", "model-reason"):
            pipe.hgetall(self.key(k))
        entries, statuses, reasons = self._call(pipe.execute)
        return sorted(
            (records.model(v, r, statuses.get(v), reasons.get(v)) for v, r in entries.items()),
            key=lambda m: int(m["version"]),
        )

    def get_model(self, version: int) -> dict[str, Any]:
        pipe = self._redis.pipeline(transaction=True)
        for k in ("models", "model-status", "model-reason"):
            pipe.hget(self.key(k), str(int(version)))
        record, status, reason = self._call(pipe.execute)
        if record is None:
            raise KeyError(f"no model version {version} in the fleet registry")
        return records.model(str(int(version)).encode(), record, status, reason)

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
        self, epoch: int | None, version: int, status: str, reason: str = ""
    ) -> bool:
        """Fenced by `epoch`; None (unfenced) is for the CLI's register path only."""
        return self.set_model_statuses(epoch, {version: (status, reason)})

    def set_model_statuses(self, epoch: int | None, changes: dict[int, tuple[str, str]]) -> bool:
        """Several status changes as one flip (a promotion: champion and retired)."""
        args: list[Any] = ["" if epoch is None else records.epoch(epoch)]
        for version, (status, reason) in changes.items():
            args += [str(int(version)), records.id(status, "status"), reason]
        keys = [self.key(k) for k in ("epoch", "models", "model-status", "model-reason")]
        reply = self._call(self._set_status, keys, args)
        if isinstance(reply, bytes):
            raise KeyError(f"no model version {reply.decode()} in the fleet registry")
        return bool(reply)
