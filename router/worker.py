"""A worker process's serving logic: which arm answers, running its model, recording.

`Worker` holds what one process needs to answer `/predict` and `/events`: the
mapped state file and this process's slab, the models of both slots, the route
the control word implies (decoded once per change of the word, not per request)
and the token signer. The ASGI front (`router.app`) decodes bodies and calls it;
the ticker calls `sync()` to load models and re-read the control block.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from router import hashing, layout, recording
from router import snapshot as snap
from router.codec import Rejected, named_rows, positional_rows
from router.config import Config, token_secret
from router.control import ControlBlock, beat_ns, shadow_of, unpack
from router.deadline import RunDeadline
from router.dedupe import Dedupe, geometry_of
from router.events import EventCounter
from router.layout import Counter, Reject
from router.mailbox import AdminMailbox
from router.models import Model
from router.paired import Pair, Pairing
from router.registry import Registry
from router.shadow import Shadow, ShadowConfig
from router.shared_memory import SharedMemory, SlabLock
from router.status import IDLE, ArmCounts, EvaluatorStatus, ModelInfo, Status, StatusReader
from router.tokens import TokenSigner

_perf_ns = time.perf_counter_ns
_sleep = time.sleep
_is_challenger = hashing.is_challenger
ARMS = ("champion", "challenger")
SAME_ORDER = np.arange(0)  # sentinel: the challenger takes the champion's columns as they are


@dataclass
class Route:
    """What the current control word means for this worker, decoded once."""

    word: int
    split_bp: int  # effective: 0 while stale or while the challenger is not loaded
    champion: int
    challenger: int
    stale: bool
    shadow: bool = False  # phase 0: copies of champion requests go to the challenger


class Worker:
    """Per-process serving state: shared memory, slab, models, routing."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.serve = config.serve
        self.segments = config.segments
        state = config.state_path
        self.shm = SharedMemory.attach(state)
        self.control = ControlBlock(self.shm)
        self.lock = SlabLock(state, self.shm.geometry.n_slabs)
        self.slab_index = self.lock.index
        self.slab = self.shm.slabs[self.slab_index]
        self.slab["owner_pid"] = os.getpid()
        self.slot_addr = [self.shm.slot_address(self.slab_index, s) for s in range(layout.N_SLOTS)]
        self.registry = Registry(state)
        self.mailbox = AdminMailbox(state)
        # The host marker in every token: this state file's creation time, the same for
        # every worker and every restart of this host, different on another host.
        created = int(self.shm.control["created_ns"])
        host = xxhash.xxh3_64_intdigest(created.to_bytes(8, "little")) & 0xFFFFFFFF
        self.signer = TokenSigner(token_secret(state), self.serve.token_ttl_s, host=host)
        self.dedupe = Dedupe(state, geometry_of(self.serve))
        self.dedupe.warm()
        self.event_counter = EventCounter(self.signer, self.dedupe, config)
        self.n_buckets = config.n_buckets
        self.tables = self.event_counter.tables
        self.record_request = recording.request_recorder()
        self.models: list[Model | None] = [None, None]
        self.version_slot: dict[int, int] = {}
        self.known_features: frozenset[str] = frozenset()
        self.columns: list[np.ndarray | None] = [None, None]  # or SAME_ORDER
        self.route = Route(-1, 0, 0, 1, True)
        self.hash_seed = 0
        self.timeout_ns = int(self.serve.challenger_timeout_ms * 1e6)
        self.deadline = RunDeadline(self.serve.challenger_timeout_ms / 1000)
        # Fault injection ([faults]): added inside the timed challenger call.
        self.challenger_delay_s = config.faults.challenger_delay_ms / 1000
        self.rejects = self.slab["rejects"]
        self.evaluator_status = StatusReader(state, self.shm, self.slab_index)
        self.pairing = Pairing(config.paired)
        # A feature too large for float32 becomes inf and is refused as non_finite_feature:
        # numpy's overflow warning on the request path would only fill the log.
        np.seterr(over="ignore")
        shadow = ShadowConfig.from_raw(config.raw)
        self.shadow = Shadow(shadow, self) if shadow is not None else None
        self.sync()

    # -- periodic work (the ticker), never per request -----------------------
    def pending_loads(self) -> list[tuple[int, int, Path]]:
        """(slot, version, file) of each model the slot table names and this worker lacks."""
        out = []
        for s in range(layout.N_SLOTS):
            version = self.control.slot_model(s)
            current = self.models[s]
            if version and (current is None or current.version != version):
                out.append((s, version, self.registry.path_of(self.registry.get(version))))
        return out

    def sync(self, loaded: dict[int, Model] | None = None) -> None:
        """Install models the slot table names (`loaded` ones were built off the event
        loop by the ticker), acknowledge slots, check the heartbeat."""
        ctrl = self.control
        for s in range(layout.N_SLOTS):
            version = ctrl.slot_model(s)
            seq = ctrl.slot_seq(s)
            current = self.models[s]
            if version and (current is None or current.version != version):
                model = (loaded or {}).get(s)
                if model is None or model.version != version:
                    model = self.registry.load(version)
                self.models[s] = model
            elif not version:
                self.models[s] = None
            if int(self.slab["slot_seq"][s]) != seq:
                # A new model in this slot: its counts start from zero.
                self.slab["slots"][s] = np.zeros((), dtype=self.slab["slots"].dtype)
                self.slab["slot_seq"][s] = seq
        self.version_slot = {m.version: s for s, m in enumerate(self.models) if m is not None}
        names: set[str] = set()
        for m in self.models:
            if m is not None:
                names.update(m.features)
        self.known_features = frozenset(names)
        self.hash_seed = ctrl.hash_seed
        self.slab["heartbeat_ns"] = beat_ns()
        self._reroute(ctrl.word())

    def _reroute(self, word: int) -> None:
        w = unpack(word)
        split, champion, challenger = w.split_bp, w.champion_slot, w.challenger_slot
        stale = self.control.heartbeat_age_s() > self.serve.stale_after_s
        if self.models[challenger] is None or not w.has_challenger or stale:
            split = 0
        if self.models[champion] is None:
            # The champion slot is not loaded yet (first start): serve what we have.
            champion, challenger, split = challenger, champion, 0
        shadow = (
            self.shadow is not None
            and shadow_of(word)
            and w.has_challenger
            and not stale
            and self.models[challenger] is not None
        )
        self.route = Route(word, split, champion, challenger, stale, shadow)
        self.deadline.watch(split > 0)
        champ = self.models[self.route.champion]
        chall = self.models[self.route.challenger]
        self.columns = [None, None]
        if champ is not None and chall is not None:
            # Positional rows are in the champion's feature order. Decided here, on
            # the ticker, so the hot path only indexes (or not at all when the order
            # is the same).
            cols = chall.columns_from(champ.features)
            same = cols is not None and np.array_equal(cols, np.arange(champ.width))
            self.columns[self.route.challenger] = SAME_ORDER if same else cols

    def ready(self) -> bool:
        return self.models[self.route.champion] is not None

    def reject(self, reason: Reject) -> None:
        self.rejects[layout.REJECT_INDEX[reason]] += 1

    def score_pair(self, pair: Pair) -> None:
        """Once its answer is sent: the champion's run on a kept challenger request's rows,
        in no request's latency (`router.paired`)."""
        self.pairing.score(pair, self.shm.control_word())

    def token(self, version: int, arm: int, cell: int, rows: int) -> str:
        """This answer's own token: a fresh nonce, signed (~1.2 µs)."""
        return self.signer.sign(version, arm, cell, int(time.time()), rows)

    # -- /predict ------------------------------------------------------------
    def predict(self, req: Any) -> tuple[dict[str, Any], int, int, int]:
        """Answer one decoded request: (payload, slot assigned, cell, error flag)."""
        if type(req) is not dict:
            raise Rejected(Reject.MALFORMED_BODY, "the body must be a map")
        rid = req.get("request_id")
        if type(rid) is not str or not rid:
            raise Rejected(Reject.MISSING_REQUEST_ID, "request_id must be a non-empty string")
        if len(rid) > self.serve.max_request_id_chars:
            raise Rejected(
                Reject.REQUEST_ID_TOO_LONG,
                f"request_id is over {self.serve.max_request_id_chars} chars",
            )
        seg = req.get("segment")
        if seg is not None and type(seg) is not dict:
            raise Rejected(Reject.BAD_SEGMENT, "segment must be a map of dimension to value")
        cell = self.segments.cell(seg)
        word = self.shm.control_word()
        if word != self.route.word:
            self._reroute(word)
        route = self.route
        split = route.split_bp  # no rollout: no hash to compute
        arm = 1 if split and _is_challenger(rid, split, self.hash_seed) else 0
        if route.stale:  # kept out of the sample-ratio check: the split was not in force
            recording.bump(self.slot_addr[route.champion], Counter.STALE_ROUTED)
        features = req.get("features")
        champion = self.models[route.champion]
        if champion is None:
            raise Rejected(Reject.MODEL_UNAVAILABLE, "no model is loaded yet", 503)
        max_batch = self.serve.max_batch
        if type(features) is list and features and type(features[0]) is not dict:
            x = positional_rows(features, max_batch)
            if x.shape[1] != champion.width:
                raise Rejected(
                    Reject.WRONG_ROW_WIDTH,
                    f"rows have {x.shape[1]} features; {champion.label} takes {champion.width}",
                )
            named = None
        elif type(features) is list and features:
            named = features
            x = named_rows(named, champion.features, self.known_features, max_batch)
        elif type(features) is dict:
            named = [features]
            x = named_rows(named, champion.features, self.known_features, max_batch)
        elif type(features) is list:
            raise Rejected(Reject.EMPTY_BATCH, "the batch has no rows")
        else:
            raise Rejected(Reject.BAD_FEATURES, "features must be a row or a list of rows")
        slot = route.champion
        fallback = None
        if arm:
            slot = route.challenger
            out, fallback = self._challenger(slot, x, named)
            if fallback is None:
                model = self.models[slot]
                assert model is not None
                if self.pairing.on:  # the champion scores these rows after the answer
                    addr = self.slot_addr[slot]
                    self.pairing.offer(route.word, route.split_bp, champion, addr, x, out)
                return self._answer(model, out, 1, cell), slot, cell, 0
        out = self._champion(route.champion, x)
        payload = self._answer(champion, out, 0, cell)
        if route.shadow:
            assert self.shadow is not None
            self.shadow.offer(x, named, cell)
        if fallback is not None:
            payload["fallback"] = fallback
            slot = route.challenger
            recording.bump(self.slot_addr[slot], Counter.FALLBACKS)
        return payload, slot, cell, 1 if fallback else 0

    def _challenger(
        self, slot: int, x: np.ndarray, named: list[Any] | None
    ) -> tuple[np.ndarray, str | None]:
        model = self.models[slot]
        addr = self.slot_addr[slot]
        assert model is not None
        if named is not None:
            try:
                inputs = named_rows(named, model.features, self.known_features, len(named))
            except Rejected:
                recording.bump(addr, Counter.ERR_FEATURES)
                return x, "challenger_features"
        else:
            cols = self.columns[slot]
            if cols is None:
                recording.bump(addr, Counter.ERR_FEATURES)
                return x, "challenger_features"
            inputs = x if cols is SAME_ORDER else x[:, cols]
        start = _perf_ns()
        options = self.deadline.begin(start)
        try:
            if self.challenger_delay_s:
                _sleep(self.challenger_delay_s)
            out = model.predict(inputs, options)
        except Exception:
            out = None
        if self.deadline.end() or _perf_ns() - start > self.timeout_ns:
            recording.bump(addr, Counter.ERR_TIMEOUT)  # cut at its deadline, or finished late
            return x, "challenger_timeout"
        if out is None:
            recording.bump(addr, Counter.ERR_RAISED)
            return x, "challenger_error"
        if out.size != x.shape[0] or recording.record_predictions(addr, out):
            return x, "challenger_invalid"
        return out, None

    def _champion(self, slot: int, x: np.ndarray) -> np.ndarray:
        model = self.models[slot]
        assert model is not None
        addr = self.slot_addr[slot]
        try:
            out = model.predict(x)
        except Exception:
            recording.bump(addr, Counter.ERR_RAISED)
            raise Rejected(Reject.MODEL_UNAVAILABLE, "the champion model failed", 503) from None
        if out.size != x.shape[0] or recording.record_predictions(addr, out):
            raise Rejected(
                Reject.MODEL_UNAVAILABLE, "the champion returned invalid predictions", 503
            )
        return out

    def _answer(self, model: Model, out: np.ndarray, arm: int, cell: int) -> dict[str, Any]:
        predictions = out.ravel().tolist()
        return {
            "arm": ARMS[arm],
            "model": model.label,
            "predictions": predictions,
            "token": self.token(model.version, arm, cell, len(predictions)),
        }

    # -- /events -------------------------------------------------------------
    def events(self, req: Any) -> dict[str, Any]:
        return self.event_counter.count(
            req, int(time.time()), self.version_slot, self.slot_addr, self.reject
        )

    # -- GET /status -----------------------------------------------------------
    def status(self, evaluator: EvaluatorStatus | None = None) -> Status:
        """The evaluator's document (by default the latest one written) plus what this
        worker sees."""
        snapshot = snap.take(self.shm)
        route = self.route
        models: dict[str, ModelInfo | None] = {}
        arms: dict[str, ArmCounts] = {}
        for arm, slot in (("champion", route.champion), ("challenger", route.challenger)):
            model = self.models[slot]
            totals = snapshot.slots[slot]
            models[arm] = (
                None
                if model is None
                else {
                    "version": str(model.version),
                    "name": model.name,
                    "label": model.label,
                    "features": list(model.features),
                }
            )
            arms[arm] = {
                "requests": totals.counter(Counter.REQUESTS),
                "predictions": totals.counter(Counter.CANDIDATES),
                "errors": totals.errors,
                "fallbacks": totals.counter(Counter.FALLBACKS),
                "impressions": totals.impressions,
                "clicks": totals.clicks,
            }
        if evaluator is None:
            evaluator = self.evaluator_status.read() or {}
        out: Status = {
            **IDLE,
            **evaluator,
            # Fleet mode: the fleet's split (this worker's is effective_split_bp).
            "split_bp": evaluator.get("split_bp", 0)
            if "fleet" in evaluator
            else (snapshot.split_bp if snapshot.has_challenger else 0),
            "effective_split_bp": route.split_bp,
            "stale": route.stale,
            "models": models,
            "arms": arms,
            "rejected": {
                r: int(n) for r, n in zip(layout.REJECT_REASONS, snapshot.rejects, strict=True) if n
            },
            "workers": snapshot.live_workers,
            "shadow": None
            if self.shadow is None
            else self.shadow.status(snapshot.slots[route.challenger]),
        }
        return out
