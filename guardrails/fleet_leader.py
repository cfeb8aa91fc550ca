"""The fleet leader's view of the world: the same `Evaluator`, wired to the fleet store.

The leader runs the single-host evaluator unchanged; only what it serves differs:
`FleetServing` turns its split flips into the fleet's versioned decision and sums
every host's published evidence for it; `FleetRegistry`, `FleetMailbox` and
`FleetLog` keep the registry, the admin queue, the rollout state and the event log
in the store. Every write carries the leader's fencing epoch: the first one refused
raises `Deposed`, and the host drops its evaluator at once, so a deposed leader
never applies a decision twice or out of order.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Protocol

import msgpack

from guardrails.checks import Result
from guardrails.fleet_evidence import Merger
from guardrails.fleet_store import FleetStore, Host
from guardrails.policy import State
from guardrails.rollouts import (
    Event,
    EventKind,
    Rollout,
    RolloutState,
    jsonable,
    pack_totals,
    unpack_totals,
)
from router.control import ControlWord, pack
from router.mailbox import Command
from router.registry import ModelRecord, Registry, Status
from router.snapshot import Snapshot

IDLE = "none"  # the evidence namespace while no rollout runs


class Deposed(Exception):
    """A fenced write was refused: another host leads now."""


def initial_decision(champion: int | None) -> dict[str, Any]:
    return {
        "rollout_id": IDLE,
        "split_bp": 0,
        "champion_slot": 0,
        "has_challenger": False,
        "slot_model": [champion or 0, 0],
        "hash_seed": secrets.randbits(63) | 1,
    }


class FleetServing:
    """The fleet's decision (what every host applies) and the sum of every host's evidence."""

    def __init__(
        self,
        store: FleetStore,
        epoch: int,
        decision: dict[str, Any],
        *,
        n_cells: int,
        n_buckets: int,
        live_s: float,
    ) -> None:
        self.store = store
        self.epoch = epoch
        self.decision = dict(decision)
        self.merger = Merger(n_cells, n_buckets)
        self.live_s = live_s
        self.unreadable: dict[str, str] = {}  # host -> why its evidence was left out
        self._hosts: list[Host] | None = None
        self.hosts_seen = 0

    # -- the decision -----------------------------------------------------------------------------
    def write(self, **changes: Any) -> None:
        self.decision.update(changes)
        if not self.store.write_decision(self.epoch, self.decision):
            raise Deposed(f"epoch {self.epoch} is no longer the fleet's")

    def word(self) -> ControlWord:
        d = self.decision
        return ControlWord(d["split_bp"], d["champion_slot"], d["has_challenger"], 0)

    def flip(
        self, split_bp: int, champion_slot: int, has_challenger: bool, shadow: bool = False
    ) -> None:
        self.write(
            split_bp=split_bp,
            champion_slot=champion_slot,
            has_challenger=has_challenger,
            shadow=shadow,
        )

    def slot_model(self, slot: int) -> int:
        return int(self.decision["slot_model"][slot])

    def load_slot(self, slot: int, version: int) -> None:
        models = list(self.decision["slot_model"])
        models[slot] = version
        self.write(slot_model=models)

    def set_rollout(self, rollout_id: str) -> None:
        if self.decision["rollout_id"] != rollout_id:
            self.write(rollout_id=rollout_id)

    # -- the evidence -----------------------------------------------------------------------------
    def take(self) -> Snapshot:
        d = self.decision
        slot_model = (int(d["slot_model"][0]), int(d["slot_model"][1]))
        self._hosts = None
        evidence = self.store.all_evidence(d["rollout_id"])
        slots, rejects, bad = self.merger.merge([e.blob for e in evidence], slot_model)
        # Left out of the sums, and said so in /status.
        self.unreadable = {evidence[n].host_id: why for n, why in bad.items()}
        self.hosts_seen = len(evidence) - len(bad)
        word = pack(d["split_bp"], d["champion_slot"], d["has_challenger"], 0)
        now = time.time_ns()
        return Snapshot(now, word, now, slot_model, (0, 0), slots, rejects, self.hosts_seen)

    def _live_hosts(self) -> list[Host]:
        """Hosts heard from within `live_s`, read once per evidence snapshot (a tick)."""
        if self._hosts is None:
            self._hosts = [h for h in self.store.hosts() if h.age_s <= self.live_s]
        return self._hosts

    def loaded_everywhere(self, slot: int) -> bool:
        version = self.slot_model(slot)
        self._hosts = None  # asked while loading, before any snapshot: read afresh
        hosts = self._live_hosts()
        return bool(hosts) and all(h.info.get("loaded", [0, 0])[slot] == version for h in hosts)

    def breaches(self, rollout_id: str) -> list[Result]:
        out = []
        for h in self._live_hosts():
            b = h.info.get("breach")
            if isinstance(b, dict) and b.get("rollout") == rollout_id:
                out.append(
                    Result(
                        str(b.get("guardrail", "local_breach")),
                        b.get("value"),
                        str(b.get("threshold", "")),
                        State.FAIL,
                        1,
                        f"on host {h.id}",
                    )
                )
        return out


def _record(m: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        int(m["version"]),
        str(m["name"]),
        "",
        str(m["sha256"]),
        tuple(m["features"]),
        Status(m["status"]),
        str(m.get("reason", "")),
        float(m.get("registered_at", 0.0)),
        str(m.get("rollout_id", "")),
        int(m.get("queue_seq", 0)),
    )


class Watcher(Protocol):
    """What keeps the fleet's registry in step with another one (guardrails.fleet_mlflow)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class FleetRegistry:
    """The fleet's model registry (bytes, sha256, features, status, the release train's
    queue) in the store; `watcher`: the leader's link to MLflow, run while it leads."""

    def __init__(
        self, store: FleetStore, epoch: int | None, watcher: Watcher | None = None
    ) -> None:
        self.store = store
        self.epoch = epoch
        self.watcher = watcher

    def get(self, version: int) -> ModelRecord:
        return _record(self.store.get_model(version))

    def all(self) -> list[ModelRecord]:
        return [_record(m) for m in self.store.models()]

    def with_status(self, status: Status) -> list[ModelRecord]:
        return [r for r in self.all() if r.status == status]

    def set_status(
        self, version: int, status: Status, reason: str = "", rollout_id: str = ""
    ) -> None:
        if not self.store.set_model_status(self.epoch, version, status.value, reason, rollout_id):
            raise Deposed(f"epoch {self.epoch} is no longer the fleet's")

    def copy_to(self, local: Registry, version: int) -> None:
        """A fleet model a host lacks: fetched by sha256, verified, kept in its registry."""
        record = self.get(version)
        try:
            if local.get(version).sha256 == record.sha256:
                return
        except KeyError:
            pass
        local.mirror(record, self.store.model_bytes(record.sha256))

    # -- the release train (guardrails.release_train.Queueing) ------------------------------------
    def queued(self) -> list[ModelRecord]:
        return [_record(m) for m in self.store.queued_models()]

    def queue(self, version: int, *, replace: bool = False, reason: str = "") -> list[int]:
        return self.store.queue_model(version, replace=replace, reason=reason)

    def watch(self) -> None:
        if self.watcher is not None:
            self.watcher.start()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


class FleetMailbox:
    """Admin commands any host queued in the store, for the leader."""

    def __init__(self, store: FleetStore, epoch: int) -> None:
        self.store = store
        self.epoch = epoch

    def pending(self) -> list[tuple[Any, Command, dict[str, Any]]]:
        out: list[tuple[Any, Command, dict[str, Any]]] = []
        for c in self.store.pending_commands():
            try:
                out.append((c.id, Command(c.kind), c.payload))
            except ValueError:
                self.finish(c.id, {"ok": False, "error": "unknown_command", "detail": c.kind})
        return out

    def finish(self, command_id: Any, result: dict[str, Any]) -> None:
        # False also when another host's leader finished it first: nothing to undo.
        self.store.finish_command(self.epoch, str(command_id), result)

    def close(self) -> None:
        pass


_ROLLOUT_FIELDS = (
    "id",
    "challenger",
    "champion",
    "phase",
    "started",
    "phase_started",
    "ended",
    "outcome",
    "reason",
    "paused",
    "phase_requests",
    "phases",
)


class FleetLog:
    """The fleet's rollouts and their event log in the store, written by the leader
    (fenced); `epoch=None` opens it read-only (`rampart report --fleet`)."""

    def __init__(self, store: FleetStore, epoch: int | None, serving: FleetServing | None) -> None:
        self.store = store
        self.epoch = epoch
        self.serving = serving
        self.path = f"fleet {store.name}"
        self.last_seq = 0
        self._outcomes: dict[str, int] | None = None

    def _save(self, key: str, value: bytes) -> None:
        if self.epoch is None or not self.store.save_state(self.epoch, key, value):
            raise Deposed(f"epoch {self.epoch} is no longer the fleet's")

    def new_id(self, challenger: int, now: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        return f"r{stamp}-v{challenger}"

    def save(self, r: Rollout, *, with_baseline: bool = False) -> None:
        record = {f: getattr(r, f) for f in _ROLLOUT_FIELDS}
        record["state"] = r.state.value
        record["baseline"] = pack_totals(r.baseline)
        self._save(f"rollout:{r.id}", msgpack.packb(record, use_bin_type=True))
        ids = self._ids()
        if r.id not in ids:
            self._save("rollouts", json.dumps([*ids, r.id]).encode())
        self._save("active", (r.id if r.state.active else "").encode())
        if not r.state.active:
            self._outcomes = None
        if self.serving is not None:
            self.serving.set_rollout(r.id if r.state.active else IDLE)

    def _ids(self) -> list[str]:
        raw = self.store.load_state("rollouts")
        return list(json.loads(raw)) if raw else []

    def get(self, rollout_id: str) -> Rollout:
        raw = self.store.load_state(f"rollout:{rollout_id}")
        if raw is None:
            raise KeyError(f"no rollout {rollout_id!r} in {self.path}")
        record = msgpack.unpackb(raw, raw=False)
        state = RolloutState(record.pop("state"))
        baseline = unpack_totals(record.pop("baseline"))
        return Rollout(state=state, baseline=baseline, **record)

    def active(self) -> Rollout | None:
        raw = self.store.load_state("active")
        return self.get(raw.decode()) if raw else None

    def all(self) -> list[Rollout]:
        return sorted((self.get(i) for i in self._ids()), key=lambda r: r.started)

    def append(
        self, rollout_id: str, kind: EventKind, phase: int, data: dict[str, Any], t: float
    ) -> int:
        record = {"rollout_id": rollout_id, "t": t, "kind": str(kind), "phase": phase}
        record["data"] = json.loads(json.dumps(data, default=jsonable))
        seq = None if self.epoch is None else self.store.append_event(self.epoch, record)
        if seq is None:
            raise Deposed(f"epoch {self.epoch} is no longer the fleet's")
        self.last_seq = seq
        return seq

    def events(
        self,
        rollout_id: str | None = None,
        kinds: tuple[str, ...] = (),
        limit: int = 0,
        exclude: tuple[str, ...] = (),
    ) -> list[Event]:
        out = []
        # The newest records suffice for a bounded listing; a report reads them all.
        for e in self.store.events(limit=max(limit * 40, 2000) if limit else 100_000):
            r = e.record
            if rollout_id is not None and r["rollout_id"] != rollout_id:
                continue
            if (kinds and r["kind"] not in kinds) or r["kind"] in exclude:
                continue
            out.append(Event(e.seq, r["rollout_id"], r["t"], r["kind"], r["phase"], r["data"]))
        return out[-limit:] if limit else out

    def outcomes(self) -> dict[str, int]:
        if self._outcomes is None:
            self._outcomes = self._count_outcomes()
        return self._outcomes

    def _count_outcomes(self) -> dict[str, int]:
        states = [self.get(i).state for i in self._ids()]
        return {
            "rollbacks": states.count(RolloutState.ROLLED_BACK),
            "promotions": states.count(RolloutState.PROMOTED),
            "stops": states.count(RolloutState.STOPPED),
        }

    def close(self) -> None:
        pass
