"""What the fleet store answers, as values, and the helpers that read Redis replies.

`guardrails.fleet_store` is the store itself; this module holds its records (a lease, a
decision, a host, an event, a command, one host tick's answers), the wake-up subscription,
and the argument checks and reply parsers its methods share.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script
from redis.exceptions import RedisError

_COMMAND_ID = re.compile(r"\d{1,20}-\d{1,20}")


class StoreUnavailable(Exception):
    """The fleet store did not answer in time, refused, or failed the command."""


@dataclass(frozen=True)
class Lease:
    epoch: int
    host_id: str
    expires_at: float = 0.0  # time.monotonic() by which the lease has surely lapsed


@dataclass(frozen=True)
class Decision:
    version: int
    epoch: int  # the leader epoch that wrote it
    t: float  # server time, seconds since the Unix epoch
    body: dict[str, Any]


class Evidence(NamedTuple):
    host_id: str
    incarnation: str
    blob: bytes


class Host(NamedTuple):
    id: str
    age_s: float
    info: dict[str, Any]


class Event(NamedTuple):
    seq: int
    epoch: int
    t: float
    record: dict[str, Any]


class Command(NamedTuple):
    id: str
    kind: str
    payload: dict[str, Any]

    @property
    def submitted(self) -> float:
        """Server time of submission (the stream id's milliseconds), Unix seconds."""
        return int(self.id.split("-")[0]) / 1000


class Tick(NamedTuple):
    """One host tick's answers, from `FleetStore.tick` (one round trip)."""

    published: bool | None  # None: no evidence was given
    lease: Lease | None  # None: not asked for, or another host leads
    decision: Decision | None
    generation: str | None
    leader: str | None  # the lease holder's host id


class Wakeups:
    """A subscription to the fleet's wake-up channel."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            self._pubsub.subscribe(channel)
        except RedisError as e:
            raise StoreUnavailable(f"subscribe {channel}: {e}") from e

    def wait(self, timeout_s: float) -> bool:
        """True if a wake-up arrived within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                if self._pubsub.get_message(timeout=left) is not None:
                    return True
        except RedisError as e:
            raise StoreUnavailable(f"wake-up channel: {e}") from e
        return False

    def close(self) -> None:
        self._pubsub.close()


def run_script(script: Script) -> Any:
    return lambda keys, args: script(keys=keys, args=args)


def lease(reply: Any, host_id: str, started: float, lease_ms: int) -> Lease | None:
    if reply is None:
        return None
    return Lease(int(reply[1]), host_id, started + lease_ms / 1000)


def decision(raw: dict[bytes, bytes]) -> Decision | None:
    if b"body" not in raw:
        return None
    return Decision(
        int(raw[b"version"]), int(raw[b"epoch"]), int(raw[b"t"]) / 1000, json.loads(raw[b"body"])
    )


def model(
    version: bytes,
    record: bytes,
    status: bytes | None,
    reason: bytes | None,
    rollout_id: bytes | None = None,
    queue_seq: float | None = None,
) -> dict[str, Any]:
    return dict(
        json.loads(record),
        version=int(version),
        status=(status or b"").decode(),
        reason=(reason or b"").decode(),
        rollout_id=(rollout_id or b"").decode(),
        queue_seq=int(queue_seq or 0),
    )


def text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def epoch(epoch: int) -> str:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"a fencing epoch is an int >= 1, got {epoch!r}")
    return str(epoch)


def id(value: str, what: str) -> str:
    # '|' separates host from incarnation in evidence fields; the length keeps keys small.
    if not isinstance(value, str) or not 0 < len(value) <= 200 or "|" in value:
        raise ValueError(f"{what} must be 1-200 characters without '|': {value!r}")
    return value


def command_id(command_id: str) -> str:
    if not _COMMAND_ID.fullmatch(command_id):
        raise ValueError(f"not a command id: {command_id!r}")
    return command_id
