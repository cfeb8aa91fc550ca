"""The fleet store: one rollout over many sidecars, kept in Redis.

Control plane only (the evaluator and the CLI); workers never import it. Every key of a
fleet lives under `rampart:{<name>}:` — the braces are a Redis Cluster hash tag, so one
fleet's keys share a slot and every multi-key operation is a single Lua script (atomic;
its keys are all passed in KEYS).

    created           string  generation id, SET NX by the first leader or registration
    epoch             int     fencing epoch: raised on every leadership change
    leader            string  the leader's host id, with the lease as its PX expiry
    decision          hash    version, epoch, t (ms), body (JSON)
    state             hash    the leader's rollout state, key -> bytes
    events            stream  fields seq, epoch, record (JSON); MAXLEN ~ 100000
    events:seq        int     the event log's sequence
    evidence:<R>      hash    "host|incarnation" -> cumulative evidence blob of rollout R
    evidence-seq:<R>  hash    "host|incarnation" -> the seq of that blob
    hosts             zset    host id scored by its last heartbeat (server ms)
    host-info         hash    host id -> JSON info
    commands          stream  pending admin commands: kind, payload (JSON)
    command:<id>      string  a finished command's result (JSON), 7 days
    models            hash    version -> JSON record (name, sha256, features, registered_at)
    model-status      hash    version -> status
    model-reason      hash    version -> reason
    model-rollout     hash    version -> the rollout that gave it its status
    queue             zset    queued versions (the release train), scored by queue-seq
    queue-seq         int     the queue's sequence
    model-seq         int     the last version handed out
    blob:<sha256>     bytes   model files, content-addressed

The pub/sub channel `rampart:{<name>}:wakeup` carries the version of each new decision;
it only saves a host a tick of latency, the stored decision stays the truth.

Fencing: a leader writes with the epoch it was given; a script compares it with the
current epoch, so a deposed leader's late write changes nothing. A new epoch is never
below the server clock in ms, so epochs keep growing even across a store that restarted
empty; `generation()` changing (or vanishing) tells a host that the state was lost.

Every Redis failure (refused, timed out, out of memory, read-only replica) is raised as
`StoreUnavailable`; invalid arguments are `ValueError`s.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from guardrails import fleet_records as records
from guardrails import fleet_scripts as scripts
from guardrails.fleet_models import FleetModels
from guardrails.fleet_records import (
    Command,
    Decision,
    Event,
    Evidence,
    Host,
    Lease,
    StoreUnavailable,
    Tick,
    Wakeups,
)

MAX_EVIDENCE_BYTES = 64 * 1024
MAX_INFO_BYTES = 4 * 1024
EVENTS_MAXLEN = 100_000
COMMANDS_MAXLEN = 10_000  # commands pile up only while no leader runs
HOST_FORGET_MS = 3_600_000  # hosts not seen for an hour drop out of hosts()
COMMAND_RESULT_TTL_S = 7 * 86_400
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class FleetStore(FleetModels):
    """One fleet's state in Redis. Cheap to construct: the first command connects."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        timeout_s: float = 0.5,
        evidence_ttl_s: float = 14 * 86_400,
    ) -> None:
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"fleet name must be 1-64 of letters, digits, '-', '_', '.': {name!r}")
        if not 0 < timeout_s <= 30:
            raise ValueError(f"fleet store timeout_s must be in (0, 30], got {timeout_s}")
        if evidence_ttl_s <= 0:
            raise ValueError(f"evidence_ttl_s must be > 0, got {evidence_ttl_s}")
        self.name = name
        self._prefix = f"rampart:{{{name}}}:"
        self._evidence_ttl_ms = str(int(evidence_ttl_s * 1000))
        try:
            pool = redis.ConnectionPool.from_url(url)
        except ValueError as e:
            raise ValueError(f"fleet store URL {url!r}: {e}") from None
        # Set after from_url because its query string would override keyword arguments: a
        # dead store must cost one short timeout, never redis-py's default retries.
        pool.connection_kwargs.update(
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._redis = redis.Redis(connection_pool=pool)
        script = self._redis.register_script
        self._acquire = script(scripts.ACQUIRE)
        self._resign = script(scripts.RESIGN)
        self._write_decision = script(scripts.WRITE_DECISION)
        self._save_state = script(scripts.SAVE_STATE)
        self._append_event = script(scripts.APPEND_EVENT)
        self._publish_evidence = script(scripts.PUBLISH_EVIDENCE)
        self._forget_evidence = script(scripts.FORGET_EVIDENCE)
        self._heartbeat = script(scripts.HEARTBEAT)
        self._finish_command = script(scripts.FINISH_COMMAND)
        self._register_model = script(scripts.REGISTER_MODEL)
        self._set_status = script(scripts.SET_STATUS)
        self._queue_model = script(scripts.QUEUE_MODEL)
        self._scripts = [v for v in vars(self).values() if isinstance(v, Script)]

    def key(self, suffix: str) -> str:
        return self._prefix + suffix

    @property
    def wakeup_channel(self) -> str:
        return self.key("wakeup")

    def close(self) -> None:
        self._redis.connection_pool.disconnect()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        """True when the store answers; never raises."""
        try:
            return bool(self._redis.ping())
        except RedisError:
            return False

    # --- generation -----------------------------------------------------------------------

    def generation(self) -> str | None:
        """The id the fleet's state was created with; a different one (or None) means the
        store lost it (restarted empty, flushed) and the caller must treat it as lost."""
        return records.text(self._call(self._redis.get, self.key("created")))

    def ensure_generation(self) -> str:
        fresh = secrets.token_hex(8)
        old = self._call(self._redis.set, self.key("created"), fresh, nx=True, get=True)
        return records.text(old) or fresh

    # --- leadership -----------------------------------------------------------------------

    def acquire_or_renew(self, host_id: str, lease_ms: int) -> Lease | None:
        """Take the lease if nobody holds it (a new, higher epoch), extend it if `host_id`
        holds it (same epoch), else None. Act as leader only until `Lease.expires_at`."""
        keys, args = self._acquire_args(host_id, lease_ms)
        started = time.monotonic()
        return records.lease(self._call(self._acquire, keys, args), host_id, started, lease_ms)

    def resign(self, host_id: str) -> bool:
        """Give the lease up (on shutdown) so another host takes over at once."""
        return bool(
            self._call(self._resign, [self.key("leader")], [records.id(host_id, "host id")])
        )

    def leader(self) -> tuple[str, int] | None:
        holder, epoch = self._call(self._redis.mget, [self.key("leader"), self.key("epoch")])
        return None if holder is None else (holder.decode(), int(epoch or 0))

    # --- decision, state, event log (fenced) ----------------------------------------------

    def write_decision(self, epoch: int, decision: dict[str, Any]) -> bool:
        """Store the fleet's decision as version + 1, only if `epoch` is current."""
        keys = [self.key("epoch"), self.key("decision")]
        args = [records.epoch(epoch), json.dumps(decision), self.wakeup_channel]
        return bool(self._call(self._write_decision, keys, args))

    def read_decision(self) -> Decision | None:
        return records.decision(self._call(self._redis.hgetall, self.key("decision")))

    def save_state(self, epoch: int, key: str, value: bytes) -> bool:
        args = [records.epoch(epoch), records.id(key, "state key"), value]
        return bool(self._call(self._save_state, [self.key("epoch"), self.key("state")], args))

    def load_state(self, key: str) -> bytes | None:
        value: bytes | None = self._call(self._redis.hget, self.key("state"), key)
        return value

    def append_event(self, epoch: int, record: dict[str, Any]) -> int | None:
        """Append to the fleet's event log; its sequence, or None when `epoch` is stale."""
        keys = [self.key("epoch"), self.key("events"), self.key("events:seq")]
        args = [records.epoch(epoch), json.dumps(record), EVENTS_MAXLEN]
        return int(self._call(self._append_event, keys, args)) or None

    def events(self, limit: int = 100) -> list[Event]:
        """The newest `limit` events, oldest first."""
        rows = self._call(self._redis.xrevrange, self.key("events"), count=limit)
        return [
            Event(
                int(f[b"seq"]),
                int(f[b"epoch"]),
                int(sid.split(b"-")[0]) / 1000,
                json.loads(f[b"record"]),
            )
            for sid, f in reversed(rows)
        ]

    # --- evidence -------------------------------------------------------------------------

    def publish_evidence(
        self, rollout_id: str, host_id: str, incarnation: str, seq: int, blob: bytes
    ) -> bool:
        """Store a host's cumulative evidence for a rollout if `seq` is newer than the
        stored one for (host, incarnation); a retry or a stale publish is a no-op (False)."""
        keys, args = self._evidence_args(rollout_id, host_id, incarnation, seq, blob)
        return bool(self._call(self._publish_evidence, keys, args))

    def all_evidence(self, rollout_id: str) -> list[Evidence]:
        key = self.key(f"evidence:{records.id(rollout_id, 'rollout id')}")
        blobs = self._call(self._redis.hgetall, key)
        out = []
        for field, blob in blobs.items():
            host, _, incarnation = field.decode().partition("|")
            out.append(Evidence(host, incarnation, blob))
        return sorted(out)

    def forget_evidence(self, epoch: int, rollout_id: str) -> bool:
        rid = records.id(rollout_id, "rollout id")
        keys = [self.key("epoch"), self.key(f"evidence:{rid}"), self.key(f"evidence-seq:{rid}")]
        return bool(self._call(self._forget_evidence, keys, [records.epoch(epoch)]))

    # --- hosts ----------------------------------------------------------------------------

    def heartbeat(self, host_id: str, info: dict[str, Any]) -> None:
        keys, args = self._heartbeat_args(host_id, info)
        self._call(self._heartbeat, keys, args)

    def hosts(self) -> list[Host]:
        """Hosts seen within the last hour, by id, with their age by the server's clock."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(self.key("hosts"), 0, -1, withscores=True)
        pipe.hgetall(self.key("host-info"))
        (sec, usec), seen, infos = self._call(pipe.execute)
        now_ms = sec * 1000 + usec / 1000
        return [
            Host(h.decode(), max(0.0, (now_ms - ms) / 1000), json.loads(infos.get(h, b"{}")))
            for h, ms in sorted(seen)
            if now_ms - ms <= HOST_FORGET_MS
        ]

    def tick(
        self,
        host_id: str,
        info: dict[str, Any],
        *,
        evidence: tuple[str, str, int, bytes] | None = None,
        lease_ms: int | None = None,
    ) -> Tick:
        """A host's whole tick in one round trip: heartbeat, publish its evidence
        (rollout id, incarnation, seq, blob), try for or renew the lease, read the
        decision and the generation."""
        ops: list[tuple[Script, tuple[list[str], list[Any]]]] = [
            (self._heartbeat, self._heartbeat_args(host_id, info))
        ]
        if evidence is not None:
            ops.append(
                (self._publish_evidence, self._evidence_args(evidence[0], host_id, *evidence[1:]))
            )
        if lease_ms is not None:
            ops.append((self._acquire, self._acquire_args(host_id, lease_ms)))
        started = time.monotonic()
        replies = self._pipeline(
            ops,
            [
                ("HGETALL", self.key("decision")),
                ("GET", self.key("created")),
                ("GET", self.key("leader")),
            ],
        )
        published = bool(replies[1]) if evidence is not None else None
        lease = None
        if lease_ms is not None:
            lease = records.lease(replies[len(ops) - 1], host_id, started, lease_ms)
        return Tick(
            published,
            lease,
            records.decision(replies[-3]),
            records.text(replies[-2]),
            records.text(replies[-1]),
        )

    # --- admin commands -------------------------------------------------------------------

    def submit_command(self, kind: str, payload: dict[str, Any]) -> str:
        fields = {"kind": records.id(kind, "command kind"), "payload": json.dumps(payload)}
        sid = self._call(
            self._redis.xadd, self.key("commands"), fields, maxlen=COMMANDS_MAXLEN, approximate=True
        )
        return str(sid.decode())

    def pending_commands(self, limit: int = 100) -> list[Command]:
        rows = self._call(self._redis.xrange, self.key("commands"), count=limit)
        return [
            Command(sid.decode(), f[b"kind"].decode(), json.loads(f[b"payload"])) for sid, f in rows
        ]

    def finish_command(self, epoch: int, command_id: str, result: dict[str, Any]) -> bool:
        """Record a pending command's result and drop it from the queue; False (and no
        change) when `epoch` is stale or the command is not pending."""
        cid = records.command_id(command_id)
        keys = [self.key("epoch"), self.key("commands"), self.key(f"command:{cid}")]
        args = [records.epoch(epoch), cid, json.dumps(result), COMMAND_RESULT_TTL_S]
        return self._call(self._finish_command, keys, args) == 1

    def command_result(self, command_id: str) -> dict[str, Any] | None:
        raw = self._call(self._redis.get, self.key(f"command:{records.command_id(command_id)}"))
        return None if raw is None else dict(json.loads(raw))

    # --- wake-ups -------------------------------------------------------------------------

    def publish_wakeup(self) -> int:
        """Nudge subscribed hosts to read the decision now; the number that heard it."""
        return int(self._call(self._redis.publish, self.wakeup_channel, b"wakeup"))

    def wakeups(self) -> Wakeups:
        return Wakeups(self._redis, self.wakeup_channel)

    # --- plumbing -------------------------------------------------------------------------

    def _acquire_args(self, host_id: str, lease_ms: int) -> tuple[list[str], list[Any]]:
        if lease_ms < 1:
            raise ValueError(f"lease_ms must be >= 1, got {lease_ms}")
        keys = [self.key("epoch"), self.key("leader"), self.key("created")]
        return keys, [records.id(host_id, "host id"), int(lease_ms), secrets.token_hex(8)]

    def _evidence_args(
        self, rollout_id: str, host_id: str, incarnation: str, seq: int, blob: bytes
    ) -> tuple[list[str], list[Any]]:
        if len(blob) > MAX_EVIDENCE_BYTES:
            raise ValueError(f"evidence blob of {len(blob)} bytes > {MAX_EVIDENCE_BYTES}")
        if not 0 <= seq < 2**53:  # Lua compares seqs as doubles
            raise ValueError(f"evidence seq must be in [0, 2**53), got {seq}")
        rid = records.id(rollout_id, "rollout id")
        field = f"{records.id(host_id, 'host id')}|{records.id(incarnation, 'incarnation')}"
        keys = [self.key(f"evidence:{rid}"), self.key(f"evidence-seq:{rid}")]
        return keys, [field, int(seq), blob, self._evidence_ttl_ms]

    def _heartbeat_args(self, host_id: str, info: dict[str, Any]) -> tuple[list[str], list[Any]]:
        text = json.dumps(info)
        if len(text) > MAX_INFO_BYTES:
            raise ValueError(f"host info of {len(text)} bytes > {MAX_INFO_BYTES}")
        keys = [self.key("hosts"), self.key("host-info")]
        return keys, [records.id(host_id, "host id"), text, HOST_FORGET_MS]

    def _pipeline(
        self, ops: list[tuple[Script, tuple[list[str], list[Any]]]], plain: list[tuple[str, ...]]
    ) -> list[Any]:
        # EVALSHA straight into the pipeline: redis-py's script pipelining sends SCRIPT
        # EXISTS first, a second round trip on every tick. A store that restarted has lost
        # its scripts: load them and run again (every op here is idempotent).
        for attempt in (0, 1):
            pipe = self._redis.pipeline(transaction=False)
            for script, (keys, args) in ops:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for command in plain:
                pipe.execute_command(*command)
            replies: list[Any] = self._call(pipe.execute, raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                for script in self._scripts:
                    self._call(self._redis.script_load, script.script)
                continue
            for r in replies:
                if isinstance(r, Exception):
                    raise StoreUnavailable(f"fleet store {self.name!r}: {r}") from r
            return replies
        raise AssertionError("unreachable")

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(fn, Script):
            fn = records.run_script(fn)
        try:
            return fn(*args, **kwargs)
        except RedisError as e:
            raise StoreUnavailable(f"fleet store {self.name!r}: {e}") from e
