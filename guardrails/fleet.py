"""Fleet mode: this host's part in one rollout over many sidecars.

Every host runs a `HostAgent` in its evaluator process instead of the single-host
loop. Each tick (one round trip to the store for the common case) it:

1. beats the local heartbeat (workers fail safe without it, as in single-host mode);
2. checks its own slabs for the breaches that need no fleet evidence (NaN or
   out-of-range predictions, challenger errors, latency) and pulls the challenger
   locally at once, publishing the breach for the leader;
3. publishes its cumulative evidence for the rollout and its liveness;
4. takes or renews the leader lease; the leader runs the single-host `Evaluator`
   over everyone's evidence (`guardrails.fleet_leader`) and writes the decision;
5. applies the stored decision to its local control block (fetching a model it lacks
   from the fleet registry by sha256), forwards admin commands its workers queued,
   and writes `status.json` for its workers.

The store unreachable: the last decision keeps serving and nothing advances (only a
leader that can write decides); a host that starts without ever reading a decision
serves 100% champion. A store that comes back without this fleet's state (restarted
empty) means 100% champion and an alert, never a rollout resurrected from one host's
memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import zlib
from typing import Any

from guardrails import checks, fleet_evidence
from guardrails.alerts import Alert, Alerter
from guardrails.evaluator import Evaluator
from guardrails.fleet_evidence import HostEvidence
from guardrails.fleet_leader import (
    IDLE,
    Deposed,
    FleetLog,
    FleetMailbox,
    FleetRegistry,
    FleetServing,
    initial_decision,
)
from guardrails.fleet_mlflow import leader_registry
from guardrails.fleet_store import FleetStore, StoreUnavailable, Tick, Wakeups
from guardrails.measures import SegmentCodes, measure
from guardrails.policy import Policy, State
from guardrails.release_train import ReleaseTrain
from router import snapshot
from router import status as status_file
from router.config import Config
from router.control import ControlWriter, shadow_of
from router.mailbox import AdminMailbox
from router.registry import Registry, Status
from router.shared_memory import SharedMemory
from router.status import EvaluatorStatus, FleetInfo, LocalBreach

# Breaches a host acts on alone, from its own slabs.
LOCAL_CHECKS = (checks.predictions_in_range, checks.error_rate, checks.latency_p99)
STATUS_REFRESH_S = 2.0  # how stale a follower's copy of the leader's status may get
POLL_S = 0.1  # admin commands and wake-ups, between ticks


class HostAgent:
    def __init__(
        self,
        config: Config,
        shm: SharedMemory,
        control: ControlWriter,
        store: FleetStore,
        *,
        host_id: str,
        alerter: Alerter | None = None,
    ) -> None:
        self.config = config
        self.state = config.state_path
        self.shm = shm
        self.publisher = status_file.Publisher(self.state, shm)
        self.control = control
        self.store = store
        self.host_id = host_id
        self.incarnation = fleet_evidence.incarnation(self.state, shm)
        self.policy = Policy.from_config(config)
        self.codes = SegmentCodes(config.segments)
        self.registry = Registry(self.state)
        self.mailbox = AdminMailbox(self.state)
        self.alerter = alerter or Alerter.from_env_and_config(config.raw.get("alerts", {}))
        self.lease_ms = int(config.fleet.lease_s * 1000)
        self.live_s = max(3.0, config.serve.stale_after_s)
        self.leader: Evaluator | None = None
        self.serving: FleetServing | None = None
        self.epoch = 0
        self.decision: dict[str, Any] | None = None
        self.decision_version = 0
        self.generation: str | None = None
        self.unreachable_since: float | None = None
        self.breach: LocalBreach | None = None
        self.leader_id: str | None = None
        self.wake_leader = False
        self.seq = 0
        self.forwarded: dict[int, str] = {}  # local command id -> fleet command id
        self.status: EvaluatorStatus = dict(status_file.IDLE)  # type: ignore[assignment]
        self.status_at = 0.0
        self.status_version = 0  # of the decision the copied status went with
        self.decision_at = 0.0  # when this host first saw the current decision version
        self.wakeups: Wakeups | None = None
        self.baseline_rollout, self.baseline = fleet_evidence.load_baseline(self.state)
        checks.warm_up(self.policy, self.codes, fleet_evidence.empty_totals(
            config.segments.n_cells, config.n_buckets
        ))  # fmt: skip
        # Until a decision is read, this host serves the champion alone.
        word = control.read()
        control.flip(0, word.champion_slot, False)

    # -- one tick ---------------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        self.control.beat()
        local = snapshot.take(self.shm)
        rollout_id = self._rollout_id()
        self._guard(local, rollout_id)
        try:
            t = self.store.tick(
                self.host_id,
                self._info(),
                evidence=self._evidence(local, rollout_id),
                lease_ms=self.lease_ms,
            )
        except StoreUnavailable as e:
            self._unreachable(now, str(e))
            return
        if self.unreachable_since is not None:
            print(f"rampart fleet: store is back ({self.store.name})", file=sys.stderr)
        self.unreachable_since = None
        self.leader_id = t.leader
        if self._lost(t):
            return
        # The store may die between any two calls of a tick: every later call that fails
        # ends the tick as a failed first call does, keeping the last decision.
        try:
            self._lead(t, now)
            self._follow(t, now)
        except StoreUnavailable as e:
            self._unreachable(now, str(e))

    def _follow(self, t: Tick, now: float) -> None:
        decision = self.serving.decision if self.serving is not None else None
        if decision is None and t.decision is not None:
            if t.decision.version != self.decision_version:
                self.decision_at = now
            decision, self.decision_version = t.decision.body, t.decision.version
        if decision is not None:
            self._apply(decision)
        self._forward_commands()
        if self.wake_leader:  # the breach is stored with this tick: the leader acts now
            self.wake_leader = False
            self.store.publish_wakeup()
        self._publish_status(now)

    def _rollout_id(self) -> str:
        return str(self.decision["rollout_id"]) if self.decision else IDLE

    # -- local catastrophes -----------------------------------------------------------------------
    def _guard(self, local: snapshot.Snapshot, rollout_id: str) -> None:
        """Pull the challenger here, at once, on a breach this host's own slabs show."""
        if rollout_id == IDLE or self.breach is not None:
            return
        word = self.control.read()
        if not word.has_challenger or not word.split_bp:
            return
        champion = measure(local.champion, self.codes)
        challenger = measure(local.challenger, self.codes)
        e = checks.gather(self.policy, champion, challenger, None, (0, 0), word.split_bp, 0, 0, 1)
        for check in LOCAL_CHECKS:
            result = check(self.policy, e)
            if result.state == State.FAIL:
                self.control.flip(0, word.champion_slot, word.has_challenger)
                self.wake_leader = True
                self.breach = {
                    "rollout": rollout_id,
                    "guardrail": result.name,
                    "value": result.value,
                    "threshold": result.threshold,
                    "at": time.time(),
                }
                print(
                    f"rampart fleet: {self.host_id} pulled the challenger: {result.name} "
                    f"{result.value_text} (threshold {result.threshold})",
                    file=sys.stderr,
                    flush=True,
                )
                return

    # -- what this host publishes -----------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        stale = self.config.serve.stale_after_s
        loaded = [
            self.control.slot_model(s) if self.control.loaded_everywhere(s, stale) else 0
            for s in (0, 1)
        ]
        return {
            "loaded": loaded,
            "breach": self.breach,
            "incarnation": self.incarnation,
            "split_bp": self.control.read().challenger_split_bp,
            "pid": os.getpid(),
        }

    def _evidence(
        self, local: snapshot.Snapshot, rollout_id: str
    ) -> tuple[str, str, int, bytes] | None:
        if rollout_id == IDLE:
            return None
        champion_slot = local.champion_slot
        if self.baseline_rollout != rollout_id:
            # The first look at this rollout: the champion counts from here.
            self.baseline_rollout, self.baseline = rollout_id, local.champion
            fleet_evidence.save_baseline(self.state, rollout_id, local.champion)
        slots = list(local.slots)
        assert self.baseline is not None
        slots[champion_slot] = slots[champion_slot] - self.baseline
        ev = HostEvidence(local.slot_model, (slots[0], slots[1]), local.rejects)
        blob = fleet_evidence.encode(ev, self.config.segments.n_cells, self.config.n_buckets)
        self.seq = max(self.seq + 1, time.time_ns() // 1000)
        return rollout_id, self.incarnation, self.seq, blob

    # -- the store's answers ----------------------------------------------------------------------
    def _unreachable(self, now: float, why: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = now
            print(f"rampart fleet: store unreachable, keeping the last decision: {why}",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._step_down()
        self._forward_commands(store_down=True)
        self._publish_status(now)

    def _lost(self, t: Tick) -> bool:
        """The store lost this fleet's state (restarted empty, flushed): 100% champion."""
        if self.generation is None or t.generation == self.generation:
            self.generation = self.generation or t.generation
            return False
        word = self.control.read()
        self.control.flip(0, word.champion_slot, False)
        self._step_down()
        self.decision, self.breach = None, None
        print("rampart fleet: the store lost the fleet's state; serving the champion only",
              file=sys.stderr, flush=True)  # fmt: skip
        self.alerter.send(
            Alert(
                kind="store_lost",
                rollout_id=self._rollout_id(),
                phase=0,
                challenger="",
                champion="",
                guardrail=None,
                value=None,
                threshold=None,
                detail=(
                    f"fleet store {self.store.name!r} came back without the fleet's state "
                    f"(generation {self.generation} -> {t.generation}); every host serves the "
                    "champion until a new rollout starts"
                ),
                at=time.time(),
            )
        )
        self.generation = t.generation
        return True

    # -- leading ----------------------------------------------------------------------------------
    def _lead(self, t: Tick, now: float) -> None:
        if t.lease is None:
            self._step_down()
            return
        if self.leader is None or t.lease.epoch != self.epoch:
            self._step_down()
            self._take_over(t, t.lease.epoch)
        assert self.leader is not None
        try:
            self.leader.tick()
        except Deposed:
            self._step_down()

    def _take_over(self, t: Tick, epoch: int) -> None:
        store = self.store
        registry = leader_registry(self.config, store, epoch)  # with MLflow, if it is the registry
        champions = registry.with_status(Status.CHAMPION)
        decision = (
            t.decision.body
            if t.decision is not None
            else initial_decision(champions[-1].version if champions else None)
        )
        serving = FleetServing(
            store,
            epoch,
            decision,
            n_cells=self.config.segments.n_cells,
            n_buckets=self.config.n_buckets,
            live_s=self.live_s,
        )
        journal = FleetLog(store, epoch, serving)
        self.leader = Evaluator(
            self.config,
            serving=serving,
            registry=registry,
            mailbox=FleetMailbox(store, epoch),
            journal=journal,
            alerter=self.alerter,
            train=ReleaseTrain(registry),  # candidates queued in the store start by themselves
        )
        if t.decision is None:
            serving.write()  # the first decision of this fleet
        self.serving, self.epoch = serving, epoch
        print(f"rampart fleet: {self.host_id} leads (epoch {epoch})", file=sys.stderr, flush=True)

    def _step_down(self) -> None:
        if self.leader is not None:
            print(f"rampart fleet: {self.host_id} no longer leads", file=sys.stderr, flush=True)
            self.leader.registry.close()  # its MLflow link, if any, stops
        self.leader, self.serving = None, None

    # -- applying the decision --------------------------------------------------------------------
    def _apply(self, d: dict[str, Any]) -> None:
        if self.decision is None or d.get("rollout_id") != self.decision.get("rollout_id"):
            self.breach = None  # a breach belongs to its rollout
        self.decision = dict(d)  # a copy: the leader keeps changing its own
        for slot in (0, 1):
            version = int(d["slot_model"][slot])
            if version and self.control.slot_model(slot) != version:
                FleetRegistry(self.store, None).copy_to(self.registry, version)
                self.control.load_slot(slot, version)
        if self.control.hash_seed != int(d["hash_seed"]):
            self.control.set_hash_seed(int(d["hash_seed"]))
        split = 0 if self.breach is not None else int(d["split_bp"])
        word = self.control.read()
        champion_slot = int(d["champion_slot"])
        if not int(d["slot_model"][champion_slot]):
            # The fleet names no champion (a registry that came back empty): this host
            # keeps serving its own, alone.
            champion_slot, split = word.champion_slot, 0
        # "shadow" is absent from decisions written before phase 0 existed: no shadow.
        shadow = bool(d.get("shadow", False)) and self.breach is None
        target = (split, champion_slot, bool(d["has_challenger"]), shadow)
        now_shadow = shadow_of(self.control.word())
        if (word.split_bp, word.champion_slot, word.has_challenger, now_shadow) != target:
            self.control.flip(*target)

    # -- admin commands from this host's workers ---------------------------------------------------
    def _forward_commands(self, store_down: bool = False) -> None:
        for local_id, kind, payload in self.mailbox.pending():
            if store_down:
                self.mailbox.finish(
                    local_id,
                    {"ok": False, "error": "store_unreachable", "detail": self.store.name},
                )
            elif local_id not in self.forwarded:
                self.forwarded[local_id] = self.store.submit_command(kind.value, payload)
        for local_id, fleet_id in list(self.forwarded.items()):
            if store_down:
                del self.forwarded[local_id]
                continue
            result = self.store.command_result(fleet_id)
            if result is not None:
                self.mailbox.finish(local_id, result)
                del self.forwarded[local_id]

    def between(self, seconds: float) -> bool:
        """Fill the wait between ticks: forward admin commands every POLL_S (they should
        not wait a tick each way) and tick early when the store publishes a wake-up (a
        new decision, or a host's breach)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.unreachable_since is None:
                    self._forward_commands()
                    if self.wakeups is None:
                        self.wakeups = self.store.wakeups()
                    if self.wakeups.wait(min(POLL_S, left)):
                        return True
                    continue
            except StoreUnavailable:
                self._close_wakeups()
            time.sleep(min(POLL_S, left))
        return False

    def _close_wakeups(self) -> None:
        if self.wakeups is not None:
            self.wakeups.close()
            self.wakeups = None

    # -- status for this host's workers ------------------------------------------------------------
    def _publish_status(self, now: float) -> None:
        if self.leader is not None:
            mine = self.leader.status(now)
            mine["fleet"] = self._fleet_info()
            blob = zlib.compress(status_file.encode(mine), 1)
            if not self.store.save_state(self.epoch, "status", blob):
                self._step_down()
            self.status, self.status_at = mine, now
        elif self.unreachable_since is None and (
            now - self.status_at >= STATUS_REFRESH_S or self.status_version != self.decision_version
        ):
            raw = self.store.load_state("status")
            if raw is not None:
                self.status, self.status_at = json.loads(zlib.decompress(raw)), now
                # A wake-up can bring the decision before the leader has stored the status
                # that goes with it: read again next tick before trusting this copy.
                fresh = now - self.decision_at > 1.0
                self.status_version = self.decision_version if fresh else -1
        doc: EvaluatorStatus = {**self.status}
        fleet: FleetInfo = {**(doc.get("fleet") or self._fleet_info(hosts=False))}
        fleet["store"] = "unreachable" if self.unreachable_since is not None else "ok"
        fleet["unreachable_since"] = self.unreachable_since
        fleet["host"] = self.host_id
        if self.unreachable_since is None:
            fleet["leader"] = self.leader_id  # the lease holder now, not as of the copy
        fleet["local_breach"] = self.breach
        doc["fleet"] = fleet
        if "evaluator" not in doc:  # no leader's status yet (or no store): this host's own
            doc["evaluator"] = {"pid": os.getpid(), "updated": now, "tick_ms": 0.0}
        if self.decision is not None:  # the fleet's split; this host's is effective_split_bp
            d = self.decision
            doc["split_bp"] = int(d["split_bp"]) if d["has_challenger"] else 0
        self.publisher.publish(lambda: doc)  # only while a worker reads it

    def _fleet_info(self, hosts: bool = True) -> FleetInfo:
        leader = self.store.leader() if hosts else None
        return {
            "name": self.store.name,
            "leader": leader[0] if leader else None,
            "hosts": [
                {"id": h.id, "age_s": round(h.age_s, 3), "split_bp": h.info.get("split_bp")}
                for h in (self.store.hosts() if hosts else [])
            ],
            "store": "ok",
            "unreachable_since": None,
        }

    def close(self) -> None:
        if self.leader is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.resign(self.host_id)  # another host takes over at once
        self._step_down()
        self._close_wakeups()
        self.alerter.close(2.0)
        self.registry.close()
        self.mailbox.close()
        self.store.close()
