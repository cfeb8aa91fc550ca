"""The worker's ASGI application.

A small front dispatch hands `/predict` and `/events` to raw ASGI handlers and
everything else to Starlette: Starlette's routing and request objects cost more
per request than the hot path's whole budget (measured: a request/response
Route served 0.63x the throughput of a bare ASGI callable; this dispatch ~0.9x).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from router import exposition as prom
from router import layout, recording, shared_memory
from router import snapshot as snap
from router.codec import JSON, Rejected, decode, encode, media_type, named_rows, positional_rows
from router.config import Config, token_secret
from router.dashboard import Dashboard
from router.layout import BASIS_POINTS, Counter
from router.mailbox import COMMANDS, CommandStore
from router.models import Model
from router.registry import Registry
from router.status import StatusReader
from router.tokens import TokenError, TokenSigner
from router.types import Receive, Scope, Send

_perf_ns = time.perf_counter_ns
_hash = xxhash.xxh3_64_intdigest
ARMS = ("champion", "challenger")
SAME_ORDER = np.arange(0)  # sentinel: the challenger takes the champion's columns as they are


@dataclass
class Route_:
    """What the current control word means for this worker, decoded once."""

    word: int
    split_bp: int  # effective: 0 while stale or while the challenger is not loaded
    champion: int
    challenger: int
    stale: bool


class Worker:
    """Per-process serving state: shared memory, slab, models, routing."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.serve = config.serve
        self.segments = config.segments
        state = config.state_path
        self.shm = shared_memory.SharedMemory.attach(state)
        self.lock = shared_memory.SlabLock(state, self.shm.geometry.n_slabs)
        self.slab_index = self.lock.index
        self.slab = self.shm.slabs[self.slab_index]
        self.slab["owner_pid"] = os.getpid()
        self.slot_addr = [self.shm.slot_address(self.slab_index, s) for s in range(layout.N_SLOTS)]
        self.tables = layout.table_words(self.segments.n_cells, config.n_buckets)
        self.n_buckets = config.n_buckets
        self.bucket_width = config.bucket_width
        self.registry = Registry(state)
        self.commands = CommandStore(state)
        self.signer = TokenSigner(token_secret(state), self.serve.token_ttl_s)
        self.models: list[Model | None] = [None, None]
        self.version_slot: dict[int, int] = {}
        self.known_features: frozenset[str] = frozenset()
        self.columns: list[np.ndarray | None] = [None, None]  # or SAME_ORDER
        self.route = Route_(-1, 0, 0, 1, True)
        self.hash_seed = 0
        self.tokens: dict[tuple[int, int], tuple[int, str]] = {}
        self.verified: dict[str, Any] = {}
        self.timeout_ns = int(self.serve.challenger_timeout_ms * 1e6)
        self.rejects = self.slab["rejects"]
        self.evaluator_status = StatusReader(state)
        self.sync()

    # -- periodic work (the ticker), never per request -----------------------
    def pending_loads(self) -> list[tuple[int, int, Path]]:
        """(slot, version, file) of each model the slot table names and this worker lacks."""
        ctrl = self.shm.control
        out = []
        for s in range(layout.N_SLOTS):
            version = int(ctrl["slot_model"][s])
            current = self.models[s]
            if version and (current is None or current.version != version):
                out.append((s, version, self.registry.path_of(self.registry.get(version))))
        return out

    def sync(self, loaded: dict[int, Model] | None = None) -> None:
        """Install models the slot table names (`loaded` ones were built off the event
        loop by the ticker), acknowledge slots, check the heartbeat."""
        ctrl = self.shm.control
        for s in range(layout.N_SLOTS):
            version = int(ctrl["slot_model"][s])
            seq = int(ctrl["slot_seq"][s])
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
        self.hash_seed = int(ctrl["hash_seed"])
        self.slab["heartbeat_ns"] = time.time_ns()
        self._reroute(self.shm.control_word())

    def _reroute(self, word: int) -> None:
        split, champion, has_challenger, _ = layout.unpack_control(word)
        challenger = 1 - champion
        stale = time.time_ns() - self.shm.heartbeat_ns() > self.serve.stale_after_s * 1e9
        if self.models[challenger] is None or not has_challenger or stale:
            split = 0
        if self.models[champion] is None:
            # The champion slot is not loaded yet (first start): serve what we have.
            champion, challenger, split = challenger, champion, 0
        self.route = Route_(word, split, champion, challenger, stale)
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

    def reject(self, reason: str) -> None:
        self.rejects[layout.REJECT_INDEX[reason]] += 1

    def token(self, slot: int, arm: int, cell: int) -> str:
        now = int(time.time())
        key = (slot * 2 + arm, cell)
        cached = self.tokens.get(key)
        if cached is not None and cached[0] == now:
            return cached[1]
        model = self.models[slot]
        assert model is not None
        token = self.signer.sign(model.version, arm, cell, now)
        if len(self.tokens) > 100_000:
            self.tokens.clear()
        self.tokens[key] = (now, token)
        return token

    # -- /predict ------------------------------------------------------------
    def predict(self, req: Any) -> tuple[dict[str, Any], int, int, int]:
        """Answer one decoded request: (payload, slot assigned, cell, error flag)."""
        if type(req) is not dict:
            raise Rejected("malformed_body", "the body must be a map")
        rid = req.get("request_id")
        if type(rid) is not str or not rid:
            raise Rejected("missing_request_id", "request_id must be a non-empty string")
        if len(rid) > self.serve.max_request_id_chars:
            raise Rejected(
                "request_id_too_long", f"request_id is over {self.serve.max_request_id_chars} chars"
            )
        seg = req.get("segment")
        if seg is not None and type(seg) is not dict:
            raise Rejected("bad_segment", "segment must be a map of dimension to value")
        cell = self.segments.cell(seg)
        word = self.shm.control_word()
        if word != self.route.word:
            self._reroute(word)
        route = self.route
        arm = 1 if _hash(rid.encode(), self.hash_seed) % BASIS_POINTS < route.split_bp else 0
        if route.stale:  # kept out of the sample-ratio check: the split was not in force
            recording.bump(self.slot_addr[route.champion], Counter.STALE_ROUTED)
        features = req.get("features")
        champion = self.models[route.champion]
        if champion is None:
            raise Rejected("model_unavailable", "no model is loaded yet", 503)
        max_batch = self.serve.max_batch
        if type(features) is list and features and type(features[0]) is not dict:
            x = positional_rows(features, max_batch)
            if x.shape[1] != champion.width:
                raise Rejected(
                    "wrong_row_width",
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
            raise Rejected("empty_batch", "the batch has no rows")
        else:
            raise Rejected("bad_features", "features must be a row or a list of rows")
        slot = route.champion
        fallback = None
        if arm:
            slot = route.challenger
            out, fallback = self._challenger(slot, x, named, route)
            if fallback is None:
                model = self.models[slot]
                assert model is not None
                return self._answer(model, out, slot, 1, cell), slot, cell, 0
        out = self._champion(route.champion, x)
        payload = self._answer(champion, out, route.champion, 0, cell)
        if fallback is not None:
            payload["fallback"] = fallback
            slot = route.challenger
            recording.bump(self.slot_addr[slot], Counter.FALLBACKS)
        return payload, slot, cell, 1 if fallback else 0

    def _challenger(
        self, slot: int, x: np.ndarray, named: list[Any] | None, route: Route_
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
        try:
            out = model.predict(inputs)
        except Exception:
            recording.bump(addr, Counter.ERR_RAISED)
            return x, "challenger_error"
        if _perf_ns() - start > self.timeout_ns:
            recording.bump(addr, Counter.ERR_TIMEOUT)
            return x, "challenger_timeout"
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
            raise Rejected("model_unavailable", "the champion model failed", 503) from None
        if out.size != x.shape[0] or recording.record_predictions(addr, out):
            raise Rejected("model_unavailable", "the champion returned invalid predictions", 503)
        return out

    def _answer(
        self, model: Model, out: np.ndarray, slot: int, arm: int, cell: int
    ) -> dict[str, Any]:
        return {
            "arm": ARMS[arm],
            "model": model.label,
            "predictions": out.ravel().tolist(),
            "token": self.token(slot, arm, cell),
        }

    # -- /events -------------------------------------------------------------
    def events(self, req: Any) -> dict[str, Any]:
        if type(req) is not dict or type(req.get("events")) is not list:
            raise Rejected("bad_event", "the body must be a map with an 'events' list")
        events = req["events"]
        if len(events) > self.serve.max_events:
            raise Rejected(
                "too_many_events",
                f"{len(events)} events; the limit is {self.serve.max_events}",
                413,
            )
        now = int(time.time())
        accepted = 0
        errors: list[dict[str, Any]] = []
        for i, ev in enumerate(events):
            reason = self._event(ev, now)
            if reason is None:
                accepted += 1
            else:
                self.reject(reason)
                if len(errors) < 100:
                    errors.append({"index": i, "reason": reason})
        return {"accepted": accepted, "rejected": len(events) - accepted, "errors": errors}

    def _event(self, ev: Any, now: int) -> str | None:
        if type(ev) is not dict:
            return "bad_event"
        kind = ev.get("type")
        if kind == "impression":
            click = 0
        elif kind == "click":
            click = 1
        else:
            return "bad_event"
        p = ev.get("prediction")
        if not (type(p) is float or type(p) is int) or not 0.0 <= p <= 1.0:
            return "bad_prediction"
        assert p is not None
        token = ev.get("token")
        try:
            claims = self.signer.verify(token, now)
        except TokenError as e:
            return e.reason
        slot = self.version_slot.get(claims.version)
        if slot is None:
            return "unknown_model_version"
        if claims.cell >= self.segments.n_cells:
            return "bad_token"
        bucket = min(int(p / self.bucket_width), self.n_buckets - 1)
        addr = self.slot_addr[slot]
        recording.record_event(addr, self.tables, claims.cell, bucket, click, float(p))
        return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejected("malformed_body", "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Rejected("body_too_large", f"body is over {limit} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, kind: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_body(e: Rejected, kind: bytes) -> bytes:
    return encode({"error": e.reason, "detail": e.detail}, kind)


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker: Worker | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics),
                Route("/status", self.status),
                Route("/admin/rollout/{command}", self.admin, methods=["POST"]),
                *Dashboard().routes(),
            ],
            lifespan=self.lifespan,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.worker = Worker(self.config)
        self._ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            self._ticker.cancel()
            self.worker.lock.release()

    async def _tick(self) -> None:
        period = self.config.serve.ticker_s
        failure = ""
        while True:
            await asyncio.sleep(period)
            worker = self.worker
            if worker is not None:
                try:
                    # Building a session takes tens of ms: off the event loop, so
                    # requests keep flowing while a new model loads.
                    loaded = {
                        slot: await asyncio.to_thread(Model, path, version)
                        for slot, version, path in worker.pending_loads()
                    }
                    worker.sync(loaded)
                    failure = ""
                except Exception as e:  # a bad model file must not stop the ticker
                    if str(e) != failure:
                        print(f"rampart worker {os.getpid()}: sync failed: {e}", flush=True)
                    failure = str(e)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/predict":
                return await self._predict(scope, receive, send)
            if path == "/events":
                return await self._events(scope, receive, send)
        await self.starlette(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> tuple[Worker, bytes, Any]:
        """The worker, the media type and the decoded body of a hot-path request."""
        worker = self.worker
        if worker is None:
            raise Rejected("model_unavailable", "the worker is starting", 503)
        if scope["method"] != "POST":
            raise Rejected("method_not_allowed", "use POST", 405)
        kind = media_type(scope["headers"])
        body = await _read_body(receive, worker.serve.max_body_bytes)
        return worker, kind, decode(body, kind)

    async def _refuse(self, send: Send, e: Rejected, scope: Scope) -> None:
        if self.worker is not None and e.reason in layout.REJECT_INDEX:
            self.worker.reject(e.reason)
        # Answer in the request's type when it named one we speak, else JSON.
        try:
            kind = media_type(scope["headers"])
        except Rejected:
            kind = JSON
        await _send(send, e.status, _error_body(e, kind), kind)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = _perf_ns()
        try:
            worker, kind, request = await self._body(scope, receive)
            payload, slot, cell, error = worker.predict(request)
        except Rejected as e:
            return await self._refuse(send, e, scope)
        out = encode(payload, kind)
        recording.record_request(worker.slot_addr[slot], (_perf_ns() - t0) // 1000, cell, error)
        await _send(send, 200, out, kind)

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            worker, kind, request = await self._body(scope, receive)
            result = worker.events(request)
        except Rejected as e:
            return await self._refuse(send, e, scope)
        await _send(send, 200, encode(result, kind), kind)

    # -- Starlette routes ------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        worker = self.worker
        if worker is None or not worker.ready():
            return JSONResponse({"ready": False, "reason": "models not loaded"}, status_code=503)
        return JSONResponse({"ready": True, "model": worker.models[worker.route.champion].label})  # type: ignore[union-attr]

    def _snapshot(self) -> tuple[Worker, snap.Snapshot]:
        worker = self.worker
        assert worker is not None
        return worker, snap.take(worker.shm)

    async def metrics(self, request: Request) -> Response:
        worker, snapshot = self._snapshot()
        text = prom.render(
            snapshot,
            worker.models,
            stale=worker.route.stale,
            effective_split_bp=worker.route.split_bp,
            status=worker.evaluator_status.read(),
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def status(self, request: Request) -> Response:
        worker, snapshot = self._snapshot()
        return JSONResponse(status_payload(worker, snapshot))

    async def admin(self, request: Request) -> Response:
        import hmac

        expected = os.environ.get("RAMPART_ADMIN_TOKEN", "")
        given = request.headers.get("authorization", "")
        if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return JSONResponse(
                {
                    "error": "unauthorized",
                    "detail": "admin needs Authorization: Bearer <RAMPART_ADMIN_TOKEN>",
                },
                status_code=401,
            )
        command = request.path_params["command"]
        if command not in COMMANDS:
            return JSONResponse({"error": "unknown_command", "detail": command}, status_code=404)
        try:
            payload = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return JSONResponse({"error": "malformed_body", "detail": "body is not JSON"}, 400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "malformed_body", "detail": "body must be a map"}, 400)
        worker = self.worker
        assert worker is not None
        command_id = worker.commands.submit(command, payload)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            result = worker.commands.result(command_id)
            if result is not None:
                code = 200 if result.get("ok") else 409
                return JSONResponse(result, status_code=code)
            await asyncio.sleep(0.05)
        return JSONResponse(
            {
                "ok": False,
                "error": "evaluator_timeout",
                "detail": "queued; no evaluator answered in 5 s",
                "command": command_id,
            },
            status_code=202,
        )


def status_payload(worker: Worker, snapshot: snap.Snapshot) -> dict[str, Any]:
    route = worker.route
    models: dict[str, Any] = {}
    arms: dict[str, Any] = {}
    for arm, slot in (("champion", route.champion), ("challenger", route.challenger)):
        model = worker.models[slot]
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
    evaluator = worker.evaluator_status.read() or {}
    return {
        "phase": 0,
        "state": "idle",
        "guardrails": [],
        "rollout": None,
        **evaluator,
        "split_bp": snapshot.split_bp if snapshot.has_challenger else 0,
        "effective_split_bp": route.split_bp,
        "stale": route.stale,
        "models": models,
        "arms": arms,
        "rejected": {
            r: int(n) for r, n in zip(layout.REJECT_REASONS, snapshot.rejects, strict=True) if n
        },
        "workers": snapshot.live_workers,
    }


def create_app() -> App:
    """uvicorn factory: the config path comes from RAMPART_CONFIG, overrides as JSON."""
    config = Config.load(os.environ.get("RAMPART_CONFIG") or None)
    overrides = json.loads(os.environ.get("RAMPART_SERVE_OVERRIDES", "{}"))
    return App(config.with_overrides(**overrides))
