"""The worker's ASGI application: the front dispatch and the operator routes.

A small front dispatch hands `/predict` and `/events` to raw ASGI handlers and
everything else to Starlette: Starlette's routing and request objects cost more
per request than the hot path's whole budget (measured: a request/response
Route served 0.63x the throughput of a bare ASGI callable; this dispatch ~0.9x).
The serving logic itself is `router.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from router import exposition as prom
from router import recording, residency
from router import snapshot as snap
from router.codec import JSON, Rejected, decode, encode, media_type
from router.config import Config
from router.dashboard import Dashboard
from router.layout import Reject
from router.mailbox import Command
from router.models import Model
from router.status import encode as encode_status
from router.types import Receive, Scope, Send
from router.worker import Worker

_perf_ns = time.perf_counter_ns
ADMIN_DEADLINE_S = 5.0


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejected(Reject.MALFORMED_BODY, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Rejected(Reject.BODY_TOO_LARGE, f"body is over {limit} bytes", 413)
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
        await self.starlette(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> tuple[Worker, bytes, Any]:
        """The worker, the media type and the decoded body of a hot-path request."""
        worker = self.worker
        if worker is None:
            raise Rejected(Reject.MODEL_UNAVAILABLE, "the worker is starting", 503)
        if scope["method"] != "POST":
            raise Rejected(Reject.METHOD_NOT_ALLOWED, "use POST", 405)
        kind = media_type(scope["headers"])
        body = await _read_body(receive, worker.serve.max_body_bytes)
        return worker, kind, decode(body, kind)

    async def _refuse(self, send: Send, e: Rejected, scope: Scope) -> None:
        if self.worker is not None:
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
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def status(self, request: Request) -> Response:
        worker = self._worker()
        evaluator = await worker.evaluator_status.fresh() or {}
        return Response(encode_status(worker.status(evaluator)), media_type="application/json")

    def _refused(self, reason: Reject, detail: str, status: int) -> JSONResponse:
        if self.worker is not None:
            self.worker.reject(reason)
        return JSONResponse({"error": reason.value, "detail": detail}, status_code=status)

    async def admin(self, request: Request) -> Response:
        """Queue a rollout command for the evaluator and wait for its answer. The
        mailbox is SQLite: every call runs on a thread, never on the event loop."""
        expected = os.environ.get("RAMPART_ADMIN_TOKEN", "")
        given = request.headers.get("authorization", "")
        if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            detail = "admin needs Authorization: Bearer <RAMPART_ADMIN_TOKEN>"
            return self._refused(Reject.UNAUTHORIZED, detail, 401)
        try:
            command = Command(request.path_params["command"])
        except ValueError:
            known = ", ".join(c.value for c in Command)
            return self._refused(Reject.UNKNOWN_COMMAND, f"commands: {known}", 404)
        try:
            payload = json.loads(await request.body() or b"{}")
        except ValueError:  # not JSON, or not UTF-8 at all
            return self._refused(Reject.MALFORMED_BODY, "body is not JSON", 400)
        if not isinstance(payload, dict):
            return self._refused(Reject.MALFORMED_BODY, "body must be a map", 400)
        mailbox = self._worker().mailbox
        command_id = await asyncio.to_thread(mailbox.submit, command, payload)
        deadline = time.monotonic() + ADMIN_DEADLINE_S
        while time.monotonic() < deadline:
            result = await asyncio.to_thread(mailbox.result, command_id)
            if result is not None:
                code = 200 if result.get("ok") else 409
                return JSONResponse(result, status_code=code)
            await asyncio.sleep(0.05)
        return JSONResponse(
            {
                "ok": False,
                "error": "evaluator_timeout",
                "detail": f"queued; no evaluator answered in {ADMIN_DEADLINE_S:g} s",
                "command": command_id,
            },
            status_code=202,
        )


def create_app() -> App:
    """uvicorn factory: the config path comes from RAMPART_CONFIG, overrides as JSON."""
    config = Config.load(os.environ.get("RAMPART_CONFIG") or None)
    overrides = json.loads(os.environ.get("RAMPART_SERVE_OVERRIDES", "{}"))
    return App(config.with_overrides(**overrides))
