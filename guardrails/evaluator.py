"""The evaluator: the only writer of the split.

Each tick (1 s): apply queued admin commands, sum the evidence, compute every
guardrail of the current phase, decide (hold, advance, promote, roll back, stop)
and act. A rollback flips the split to 100% champion first, in the tick that saw
the breach; the registry, the event log and the alert follow, and alert delivery
runs on its own thread so it can never delay a flip. What it serves (this host's
control block, or the fleet's decision) is `guardrails.serving`; the process that
ticks it is `guardrails.process`.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrails import checks, storage, view
from guardrails.alerts import Alert, Alerter, Delivery
from guardrails.clock import Durations
from guardrails.cpu_budget import give_way
from guardrails.measures import ArmMetrics, SegmentCodes, measure
from guardrails.policy import Action, Decision, Policy, decide
from guardrails.release_train import ReleaseTrain
from guardrails.rollouts import EventKind, Journal, Rollout, RolloutState
from guardrails.serving import LocalServing, Mailbox, ModelRegistry, RolloutLog, Serving
from router import dedupe
from router.config import Config
from router.mailbox import AdminMailbox, Command
from router.registry import Status, open_registry
from router.shared_memory import Geometry, SharedMemory
from router.snapshot import SlotTotals
from router.status import EvaluatorStatus

Clock = Callable[[], float]


class Evaluator:
    def __init__(
        self,
        config: Config,
        shm: SharedMemory | None = None,
        *,
        serving: Serving | None = None,
        registry: ModelRegistry | None = None,
        mailbox: Mailbox | None = None,
        journal: RolloutLog | None = None,
        clock: Clock = time.time,
        alerter: Alerter | None = None,
        steady: Clock | None = None,
        train: ReleaseTrain | None = None,
    ) -> None:
        """Single-host by default: this host's `shm`, and the registry, mailbox and journal
        of its state directory, and the release train on that registry. Fleet mode passes
        the fleet's own (guardrails.fleet).
        `clock` gives the times recorded; durations are read on `steady` (guardrails.clock;
        time.monotonic by default, and a test's own `clock` if it passes only that)."""
        self.config = config
        if serving is None:
            assert shm is not None, "an evaluator serves either a state file or `serving`"
            serving = LocalServing(shm, config.serve.stale_after_s)
        self.serving = serving
        self.clock = clock
        self.hold = storage.Hold()
        self.durations = Durations(steady or (time.monotonic if clock is time.time else clock))
        self.policy = Policy.from_config(config)
        self.codes = SegmentCodes(config.segments)
        state = config.state_path
        self.train = train
        if registry is None:
            local = open_registry(config)
            self.train = ReleaseTrain(local)
        self.registry: ModelRegistry = registry or local
        self.mailbox: Mailbox = mailbox or AdminMailbox(state)
        self.journal: RolloutLog = journal or Journal(state)
        self.alerter = alerter or Alerter.from_env_and_config(config.raw.get("alerts", {}))
        self.alert_results: deque[Delivery] = deque(maxlen=1000)
        self.alerter.on_result(self.alert_results.append)  # drained into the log by tick()
        self.rollout = self.journal.active()
        self.results: list[checks.Result] = []
        self.evidence: checks.Evidence | None = None
        self.recent: deque[tuple[float, SlotTotals]] = deque()
        self.series = view.Series()
        self.last_journal = float("-inf")  # steady time of the last metrics record
        self.tick_seconds = 0.0
        self._events_cache: tuple[Any, list[dict[str, Any]]] = (None, [])
        self._adopt()
        empty = self.serving.take().champion
        checks.warm_up(self.policy, self.codes, empty - empty)

    # -- the split --------------------------------------------------------------------------------
    def _flip(self, split_bp: int, champion_slot: int, has_challenger: bool) -> None:
        self.serving.flip(split_bp, champion_slot, has_challenger)

    def _champion_slot(self) -> int:
        return self.serving.word().champion_slot

    def _adopt(self) -> None:
        """Make the split agree with the registry and the journal (start, restart)."""
        champions = self.registry.with_status(Status.CHAMPION)
        if not champions:
            return
        version = champions[-1].version
        word = self.serving.word()
        champion_slot = word.champion_slot
        if self.serving.slot_model(champion_slot) != version:
            self.serving.load_slot(champion_slot, version)
            self._flip(0, champion_slot, False)
        r = self.rollout
        if r is not None and self.serving.slot_model(1 - champion_slot) != r.challenger:
            # The shared-memory file was replaced: the rollout's evidence is gone.
            self._end(
                Decision(Action.STOP, "shared-memory state lost on restart"), RolloutState.STOPPED
            )
        elif r is None and word.has_challenger:
            self._flip(0, champion_slot, False)

    # -- the tick ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Decide and act. Publishing `status()` is the caller's (it is the slow part).
        A storage fault holds 100% champion and the tick ends normally (guardrails.storage)."""
        started = time.perf_counter()
        now = self.clock()
        self.durations.tick(now)
        try:
            if self.hold.reason is None or storage.resume(self):
                self._tick(now)
        except Exception as e:
            if not storage.is_fault(e):
                raise
            storage.hold(self, e)
        if self.rollout is not None:
            self.durations.keep(self.rollout.started, self.rollout.phase_started)
        self.tick_seconds = time.perf_counter() - started

    def _tick(self, now: float) -> None:
        for command_id, kind, payload in self.mailbox.pending():
            try:
                result = self.apply(kind, payload)
            except Exception as e:  # a bad command must not stop the evaluator
                if storage.is_fault(e):
                    raise  # not the command's fault: it stays queued, and the tick holds
                result = {"ok": False, "error": "command_failed", "detail": str(e)}
            self.mailbox.finish(command_id, result)
        r = self.rollout
        if r is not None and r.state == RolloutState.LOADING:
            self._finish_loading(r, now)
        elif r is not None and r.state.active:
            self._judge(r, now)
        elif self.train is not None and (version := self.train.due()) is not None:
            self.train.started(version, self._start({"version": version}))
        self._drain_alerts(now)

    def _judge(self, r: Rollout, now: float) -> None:
        snap = self.serving.take()
        assert r.baseline is not None
        give_way()
        champion = measure(snap.champion - r.baseline, self.codes)
        give_way()
        challenger_totals = snap.challenger
        challenger = measure(challenger_totals, self.codes)
        give_way()
        recent = self._recent(self.durations.steady_now, challenger_totals)
        give_way()
        phase_requests = (
            champion.requests - champion.stale_routed - r.phase_requests[0],
            challenger.requests - r.phase_requests[1],
        )
        e = checks.gather(
            self.policy,
            champion,
            challenger,
            recent,
            phase_requests,
            snap.split_bp,
            self.durations.since(r.phase_started),
            self.durations.since(r.started),
            r.phase,
        )
        self.evidence = e
        give_way()
        self.results = checks.evaluate(self.policy, e, r.phase) + self.serving.breaches(r.id)
        give_way()
        decision = decide(self.policy, r.phase, self.results, e.time_in_phase_s, r.paused)
        self.series.add(now, r.phase, snap.split_bp, e)
        if decision.action in (Action.ROLLBACK, Action.STOP):
            outcome = (
                RolloutState.ROLLED_BACK
                if decision.action == Action.ROLLBACK
                else RolloutState.STOPPED
            )
            self._end(decision, outcome)
        elif decision.action == Action.ADVANCE:
            self._advance(r, now, champion, challenger)
        elif decision.action == Action.PROMOTE:
            self._promote(decision)
        elif self.durations.steady_now - self.last_journal >= self.policy.journal_every_s:
            self.last_journal = self.durations.steady_now
            self.journal.append(r.id, EventKind.METRICS, r.phase, view.metrics_record(e), now)

    def _recent(self, now: float, totals: SlotTotals) -> ArmMetrics | None:
        """The challenger over the last window_s (`now` on the steady clock): the oldest
        kept total subtracted."""
        self.recent.append((now, totals))
        while len(self.recent) > 2 and self.recent[1][0] <= now - self.policy.window_s:
            self.recent.popleft()
        oldest_t, oldest = self.recent[0]
        if now - oldest_t < self.policy.window_s / 2:
            return None
        return measure(totals - oldest, self.codes)

    # -- transitions ------------------------------------------------------------------------------
    def _finish_loading(self, r: Rollout, now: float) -> None:
        """Raise the split only once every live worker has loaded the challenger."""
        champion_slot = self._champion_slot()
        if not self.serving.loaded_everywhere(1 - champion_slot):
            if self.durations.since(r.started) > self.policy.load_timeout_s:
                self._end(
                    Decision(
                        Action.STOP,
                        "workers did not load the challenger in time",
                        "challenger_load",
                    ),
                    RolloutState.STOPPED,
                )
            return
        r.baseline = self.serving.take().champion
        r.phase_requests = [0, 0]
        r.state = RolloutState.PAUSED if r.paused else RolloutState.RUNNING
        r.started = r.phase_started = now
        first = r.phase  # 0 (shadow, split 0) with [phases.0], else 1
        r.phases = [{"phase": first, "entered": now, "exited": None, "result": "current"}]
        split = self.policy.phase(first).split_bp
        self.serving.flip(split, champion_slot, True, first == 0)
        self.journal.save(r, with_baseline=True)
        self.journal.append(r.id, EventKind.PHASE, first, {"split_bp": split}, now)

    def _advance(self, r: Rollout, now: float, champion: ArmMetrics, ch: ArmMetrics) -> None:
        nxt = r.phase + 1
        split = self.policy.phase(nxt).split_bp
        self._flip(split, self._champion_slot(), True)
        record = [x.to_json() for x in self.results]
        r.phases[-1].update(exited=now, result="passed")
        r.phases.append({"phase": nxt, "entered": now, "exited": None, "result": "current"})
        r.phase, r.phase_started = nxt, now
        r.phase_requests = [champion.requests - champion.stale_routed, ch.requests]
        self.journal.save(r)
        self.journal.append(
            r.id,
            EventKind.ADVANCED,
            nxt,
            {"from": nxt - 1, "split_bp": split, "guardrails": record, "metrics": self._metrics()},
            now,
        )

    def _promote(self, decision: Decision, manual: bool = False) -> None:
        self._flip(0, 1 - self._champion_slot(), False)  # the new champion serves, in one flip
        self._record_promotion(decision, manual)

    def _record_promotion(self, decision: Decision, manual: bool) -> None:
        r = self.rollout
        assert r is not None
        self.hold.unfinished = lambda: self._record_promotion(decision, manual)
        now = self.clock()
        self.registry.set_status(r.challenger, Status.CHAMPION, "promoted", r.id)
        self.registry.set_status(r.champion, Status.RETIRED, f"replaced by {r.challenger}", r.id)
        self._close(r, RolloutState.PROMOTED, decision, now, manual)
        self.hold.unfinished = None

    def _end(self, decision: Decision, outcome: RolloutState, manual: bool = False) -> None:
        r = self.rollout
        assert r is not None
        self._flip(0, self._champion_slot(), False)  # first, before anything slow
        self.hold.unfinished = lambda: self._end(decision, outcome, manual)
        now = self.clock()
        self.registry.set_status(r.challenger, Status.FAILED, decision.reason, r.id)
        self._close(r, outcome, decision, now, manual)
        self.hold.unfinished = None

    def _close(
        self, r: Rollout, outcome: RolloutState, decision: Decision, now: float, manual: bool
    ) -> None:
        failed = next((x for x in self.results if x.name == decision.guardrail), None)
        r.state, r.ended, r.outcome, r.reason = outcome, now, outcome.value, decision.reason
        if r.phases:
            r.phases[-1].update(exited=now, result="passed" if outcome == "promoted" else "failed")
        self.journal.save(r)
        data = {
            "reason": decision.reason,
            "guardrail": decision.guardrail,
            "value": failed.value if failed else None,
            "threshold": failed.threshold if failed else None,
            "manual": manual,
            "guardrails": [x.to_json() for x in self.results],
            "metrics": self._metrics(),
        }
        self.journal.append(r.id, EventKind(outcome.value), r.phase, data, now)
        self.alerter.send(
            Alert(
                kind="rollback" if outcome == RolloutState.ROLLED_BACK else outcome.value,
                rollout_id=r.id,
                phase=r.phase,
                challenger=self.label(r.challenger),
                champion=self.label(r.challenger if outcome == "promoted" else r.champion),
                guardrail=decision.guardrail,
                value=failed.value if failed else None,
                threshold=failed.threshold if failed else None,
                detail=decision.reason,
                at=now,
            )
        )

    def _metrics(self) -> dict[str, Any]:
        return view.metrics_record(self.evidence) if self.evidence else {}

    def label(self, version: int) -> str:
        try:
            return self.registry.get(version).label
        except (KeyError, sqlite3.Error, OSError):  # also when the registry cannot be read
            return str(version)

    def _drain_alerts(self, now: float) -> None:
        while self.alert_results:
            d = self.alert_results.popleft()
            phase = self.rollout.phase if self.rollout else 0
            record = {**d._asdict(), "outcome": d.outcome.value}
            self.journal.append(d.rollout_id, EventKind.ALERT, phase, record, now)

    # -- admin commands ---------------------------------------------------------------------------
    def apply(self, kind: Command, payload: dict[str, Any]) -> dict[str, Any]:
        r = self.rollout
        active = r is not None and r.state.active
        if kind == Command.START:
            if active:
                return {"ok": False, "error": "rollout_in_progress", "detail": r.id if r else ""}
            return self._start(payload)
        if not active or r is None:
            return {"ok": False, "error": "no_rollout"}
        now = self.clock()
        if kind in (Command.PAUSE, Command.RESUME):
            r.paused = kind == Command.PAUSE
            if r.state != RolloutState.LOADING:
                r.state = RolloutState.PAUSED if r.paused else RolloutState.RUNNING
            self.journal.save(r)
            event = EventKind.PAUSED if r.paused else EventKind.RESUMED
            self.journal.append(r.id, event, r.phase, {"manual": True}, now)
            return {"ok": True, "state": r.state.value, "split_bp": self.serving.word().split_bp}
        if kind == Command.ROLLBACK:
            self._end(
                Decision(Action.ROLLBACK, "manual rollback", "manual"),
                RolloutState.ROLLED_BACK,
                manual=True,
            )
            return {"ok": True, "split_bp": 0, "rollout": r.id}
        if kind == Command.PROMOTE:
            if r.state == RolloutState.LOADING:
                return {"ok": False, "error": "challenger_not_loaded"}
            self._promote(Decision(Action.PROMOTE, "manual promotion", "manual"), manual=True)
            return {"ok": True, "champion": str(r.challenger), "rollout": r.id}
        return {"ok": False, "error": "unknown_command"}

    def _start(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            version = int(payload.get("version", ""))
            record = self.registry.get(version)
        except (KeyError, ValueError, TypeError):
            return {"ok": False, "error": "unknown_version", "detail": str(payload.get("version"))}
        if record.status not in (Status.CANDIDATE, Status.QUEUED):
            return {"ok": False, "error": "not_a_candidate", "detail": record.status.value}
        champions = self.registry.with_status(Status.CHAMPION)
        if not champions:
            return {"ok": False, "error": "no_champion"}
        now = self.clock()
        champion_slot = self._champion_slot()
        rollout_id = self.journal.new_id(version, now)
        self.registry.set_status(version, Status.CHALLENGER, "rollout started", rollout_id)
        self.serving.load_slot(1 - champion_slot, version)
        self._flip(0, champion_slot, True)  # workers load it; the split rises once all have
        r = Rollout(
            id=rollout_id,
            challenger=version,
            champion=champions[-1].version,
            state=RolloutState.LOADING,
            phase=self.policy.first_phase,
            started=now,
            phase_started=now,
        )
        self.rollout, self.results, self.evidence = r, [], None
        self.recent.clear()
        self.series = view.Series()
        self.journal.save(r)
        self.journal.append(
            r.id,
            EventKind.STARTED,
            r.phase,
            {"challenger": record.label, "champion": self.label(r.champion)},
            now,
        )
        return {"ok": True, "rollout": r.id, "challenger": str(version), "state": r.state.value}

    # -- what /status shows ----------------------------------------------------------------------
    def status(self, now: float) -> EvaluatorStatus:
        return view.status(
            policy=self.policy,
            rollout=self.rollout,
            results=self.results,
            evidence=self.evidence,
            series=self.series,
            events=self._recent_events(),
            counters=self.journal.outcomes(),
            split_bp=self.serving.word().challenger_split_bp,
            bucket_width=self.config.bucket_width,
            tick_ms=self.tick_seconds * 1000,
            now=now,
        )

    def _recent_events(self) -> list[dict[str, Any]]:
        """The rollout's last 50 decisions, re-read only when the log has grown."""
        r = self.rollout
        if r is None:
            return []
        key = (r.id, self.journal.last_seq)
        if self._events_cache[0] != key:
            events = self.journal.events(r.id, limit=50, exclude=(EventKind.METRICS,))
            self._events_cache = (key, [view.event_brief(x) for x in events])
        return self._events_cache[1]

    def close(self) -> None:
        self.alerter.close(2.0)
        self.journal.close()
        self.registry.close()
        self.mailbox.close()


def prepare(config: Config) -> SharedMemory:
    geometry = Geometry(config.serve.max_workers, config.segments.n_cells, config.n_buckets)
    Path(config.state_path).mkdir(parents=True, exist_ok=True)
    shm = SharedMemory.open(config.state_path, geometry)
    dedupe.prepare(config.state_path, dedupe.geometry_of(config.serve))  # events, exactly once
    return shm
