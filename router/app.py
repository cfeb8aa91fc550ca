"""The worker's ASGI application: the front dispatch and the operator routes.

A small front dispatch hands `/predict` and `/events` to raw ASGI handlers and
everything else to Starlette: Starlette's routing and request objects cost more
per request than the hot path's whole budget (measured: a request/response
Route served 0.63x the throughput of a bare ASGI callable; this dispatch ~0.9x).
The serving logic itself is `router.worker.Worker`; reading a hot-path body and sending its
answer is `router.raw_asgi`; `router.http_fast` answers the common request without ASGI,
through `App.answer` as the handlers here do.

Every request gets an answer, and a keep-alive connection is closed only when the
answer says so (`Connection: close`): a body over the limit that was not read to its
end, or a 500 (a bug; Starlette answers it and then re-raises, and uvicorn closes the
connection under a client that was told nothing and sends its next request into it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import sqlite3
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from router import exposition as prom
from router import layout, paired, recording, residency
from router import snapshot as snap
from router.body_deadline import BodyDeadlines
from router.codec import (
    Rejected,
    all_finite,
    decode,
    encode,
    encode_answer,
    kind_of,
)
from router.config import Config
from router.dashboard import Dashboard
from router.layout import Reject
from router.mailbox import Command, MailboxUnavailable
from router.models import Model
from router.openapi import SCHEMA
from router.raw_asgi import (
    BodyNotRead,
    answer_kind,
    closing_500s,
    error_body,
    framing,
    read_body,
    send_answer,
)
from router.status import encode as encode_status
from router.types import Receive, Scope, Send
from router.worker import Worker

_perf_ns = time.perf_counter_ns
ADMIN_DEADLINE_S = 5.0
ADMIN_MAX_BODY = 64 * 1024  # {"version": "..."}: anything near this is not a command
T = TypeVar("T")


def warm_kernels(config: Config) -> None:
    """Load the hot path's numba kernels: from the cache (or compiling) that takes over a
    second, which the first /predict would otherwise spend blocking the loop, and record
    as its model's latency. `rampart serve` runs this before it forks the evaluators'
    zygote, so the kernels and numba's context are pages the two share (rampart.zygote).
    They run on a scratch slot with the real argument types, so no counter changes."""
    n_cells, n_buckets = config.segments.n_cells, config.n_buckets
    scratch = np.zeros(1, layout.slot_dtype(n_cells, n_buckets))
    addr = scratch.ctypes.data
    x = np.full((1, 1), 0.5, np.float32)
    all_finite(x)
    recording.record_predictions(addr, x)
    paired.record_pairs(addr, x, x)
    recording.record_request(addr, 1, 0, 0)
    recording.bump(addr, layout.Counter.ERR_RAISED)
    recording.record_event(addr, layout.table_words(n_cells, n_buckets), 0, 0, 1, 0.5)


def _warm_up(worker: Worker) -> None:
    """The kernels (a no-op when `rampart serve` loaded them already) and each model's
    first run, before the first request."""
    warm_kernels(worker.config)
    scratch = np.zeros(1, layout.slot_dtype(worker.segments.n_cells, worker.n_buckets))
    outs = []
    for model in worker.models:
        if model is not None:
            try:  # a model that fails here is the request path's to count, not the start's
                out = model.predict(np.zeros((1, model.width), np.float32))
            except Exception:
                continue
            recording.record_predictions(scratch.ctypes.data, out)  # its output's shape
            outs.append(out)
    for champion in outs:  # each model's output type as either arm of a pair
        for challenger in outs:
            paired.record_pairs(scratch.ctypes.data, champion, challenger)


# status, body, media type, and the champion's paired run to do once the answer is sent
Answer = tuple[int, bytes, bytes, "paired.Pair | None"]


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker: Worker | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.bodies = BodyDeadlines(config.serve.body_timeout_s)
        # The admin mailbox is SQLite: its calls run on this one thread, never on the event
        # loop, and a flood of admin requests cannot take the threads model loading uses.
        self._admin_thread = ThreadPoolExecutor(1, thread_name_prefix="rampart-admin")
        self._openapi = json.dumps(SCHEMA).encode()
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics),
                Route("/status", self.status),
                Route("/openapi.json", self.openapi),
                Route("/admin/rollout/{command}", self.admin, methods=["POST"]),
                *Dashboard().routes(),
            ],
            lifespan=self.lifespan,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        worker = Worker(self.config)
        _warm_up(worker)
        self.worker = worker
        self._ticker = asyncio.create_task(self._tick())
        try:
            yield
        finally:
            self._ticker.cancel()
            self._admin_thread.shutdown(wait=False, cancel_futures=True)
            if self.worker.shadow is not None:
                self.worker.shadow.close()
            self.worker.lock.release()

    async def _tick(self) -> None:
        period = self.config.serve.ticker_s
        failure = ""
        while True:
            await asyncio.sleep(period)
            self.bodies.sweep()
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
                    if residency.due():  # LLVM's pages out, once the kernels are loaded
                        await asyncio.to_thread(residency.release_compiler)
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
            return await self.starlette(scope, receive, closing_500s(send))
        await self.starlette(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> tuple[Worker, bytes | None, bytes]:
        """The worker, the Content-Type and the body of a hot-path request. The body is read
        (or refused as too large) before any other refusal, so the connection stays usable."""
        worker = self.worker
        content_type, declared = framing(scope["headers"])
        body = await read_body(receive, self.config.serve.max_body_bytes, declared, self.bodies)
        if worker is None:
            raise Rejected(Reject.MODEL_UNAVAILABLE, "the worker is starting", 503)
        if scope["method"] != "POST":
            raise Rejected(Reject.METHOD_NOT_ALLOWED, "use POST", 405)
        return worker, content_type, body

    async def _refuse(self, send: Send, e: Rejected, scope: Scope) -> None:
        if self.worker is not None:
            self.worker.reject(e.reason)
        kind = answer_kind(scope["headers"])
        await send_answer(send, e.status, error_body(e, kind), kind, isinstance(e, BodyNotRead))

    def answer(
        self,
        worker: Worker,
        predict: bool,
        content_type: bytes | None,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> Answer:
        """`/predict` (or `/events`) on a whole POSTed body, at once: the status, the answer,
        its media type, and the champion's paired run to do once the answer is sent. The
        ASGI handlers below and `router.http_fast` (which answers without an ASGI task)
        both answer through here."""
        try:
            kind = kind_of(content_type)
            if not predict:
                return 200, encode(worker.events(decode(body, kind)), kind), kind, None
            # Time in the handler: from the whole body, so a slow client or network is
            # not counted as the model's latency (the latency_p99 guardrail reads it).
            t0 = _perf_ns()
            payload, slot, cell, error = worker.predict(decode(body, kind))
        except Rejected as e:
            worker.reject(e.reason)
            kind = answer_kind(headers)
            return e.status, error_body(e, kind), kind, None
        out = encode_answer(payload, kind)
        worker.record_request(worker.slot_addr[slot], (_perf_ns() - t0) // 1000, cell, error)
        pairing = worker.pairing
        pair = pairing.pending
        if pair is not None:
            pairing.pending = None
        return 200, out, kind, pair

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            worker, content_type, body = await self._body(scope, receive)
        except Rejected as e:
            return await self._refuse(send, e, scope)
        status, out, kind, pair = self.answer(worker, True, content_type, body, scope["headers"])
        await send_answer(send, status, out, kind)
        if pair is not None:
            worker.score_pair(pair)  # the answer is sent

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            worker, content_type, body = await self._body(scope, receive)
        except Rejected as e:
            return await self._refuse(send, e, scope)
        status, out, kind, _ = self.answer(worker, False, content_type, body, scope["headers"])
        await send_answer(send, status, out, kind)

    # -- Starlette routes ------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        worker = self.worker
        if worker is None or not worker.ready():
            return JSONResponse({"ready": False, "reason": "models not loaded"}, status_code=503)
        champion = worker.models[worker.route.champion]
        return JSONResponse({"ready": True, "model": champion.label if champion else None})

    def _worker(self) -> Worker:
        worker = self.worker
        assert worker is not None  # Starlette routes run after the lifespan started
        return worker

    async def metrics(self, request: Request) -> Response:
        worker = self._worker()
        snapshot = snap.take(worker.shm)
        text = prom.render(
            snapshot,
            worker.models,
            stale=worker.route.stale,
            effective_split_bp=worker.route.split_bp,
            status=await worker.evaluator_status.fresh(),
            dedupe_load=worker.dedupe.load(int(time.time())),
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def status(self, request: Request) -> Response:
        worker = self._worker()
        evaluator = await worker.evaluator_status.fresh() or {}
        return Response(encode_status(worker.status(evaluator)), media_type="application/json")

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    def _refused(self, e: Rejected) -> JSONResponse:
        if self.worker is not None:
            self.worker.reject(e.reason)
        close = {"connection": "close"} if isinstance(e, BodyNotRead) else None
        body = {"error": e.reason.value, "detail": e.detail}
        return JSONResponse(body, status_code=e.status, headers=close)

    async def _on_admin_thread(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._admin_thread, call, *args)

    async def admin(self, request: Request) -> Response:
        """Queue a rollout command for the evaluator and wait for its answer, at most
        ADMIN_DEADLINE_S in all. The mailbox is SQLite: every call runs on the admin
        thread, never on the event loop."""
        try:  # read first (bounded), so that any refusal leaves the connection usable
            declared = framing(request.scope["headers"])[1]
            body = await read_body(request.receive, ADMIN_MAX_BODY, declared, self.bodies)
        except Rejected as e:
            return self._refused(e)
        expected = os.environ.get("RAMPART_ADMIN_TOKEN", "")
        given = request.headers.get("authorization", "")
        if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            detail = "admin needs Authorization: Bearer <RAMPART_ADMIN_TOKEN>"
            return self._refused(Rejected(Reject.UNAUTHORIZED, detail, 401))
        try:
            command = Command(request.path_params["command"])
        except ValueError:
            known = ", ".join(c.value for c in Command)
            return self._refused(Rejected(Reject.UNKNOWN_COMMAND, f"commands: {known}", 404))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:  # not JSON, or not UTF-8 at all (UnicodeDecodeError)
            return self._refused(Rejected(Reject.MALFORMED_BODY, "body is not JSON"))
        if not isinstance(payload, dict):
            return self._refused(Rejected(Reject.MALFORMED_BODY, "body must be a map"))
        mailbox = self._worker().mailbox
        command_id = None
        try:
            async with asyncio.timeout(ADMIN_DEADLINE_S):
                command_id = await self._on_admin_thread(mailbox.submit, command, payload)
                while True:
                    result = await self._on_admin_thread(mailbox.result, command_id)
                    if result is not None:
                        return JSONResponse(result, status_code=200 if result.get("ok") else 409)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        except (MailboxUnavailable, sqlite3.Error) as e:  # the state directory, not the caller
            failed = {"ok": False, "error": "mailbox_unavailable", "detail": str(e)}
            return JSONResponse(failed, status_code=503)
        queued = "queued" if command_id is not None else "not confirmed queued (mailbox busy)"
        return JSONResponse(
            {
                "ok": False,
                "error": "evaluator_timeout",
                "detail": f"{queued}; no evaluator answered in {ADMIN_DEADLINE_S:g} s",
                "command": command_id,
            },
            status_code=202,
        )


def create_app() -> App:
    """uvicorn factory: the config path comes from RAMPART_CONFIG, overrides as JSON."""
    # A feature too large for float32 is refused as non_finite_feature; numpy's warning
    # would fill the log once per such request (np.seterr is per asyncio task: a filter).
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning, "router.codec")
    config = Config.load(os.environ.get("RAMPART_CONFIG") or None)
    overrides = json.loads(os.environ.get("RAMPART_SERVE_OVERRIDES", "{}"))
    return App(config.with_overrides(**overrides))
