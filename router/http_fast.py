"""uvicorn's httptools protocol, answering a whole `/predict` or `/events` request in place.

Under ASGI every request costs the server a `RequestResponseCycle`, an `asyncio.Event`, a
task, a `receive` and two `send` coroutines, two regex checks per response header, and two
writes (head, then body: two `send` syscalls and, with TCP_NODELAY, two segments). For a
one-row `/predict` that machinery costs more than rampart's own work. This protocol keeps
uvicorn (its parser, flow control, keep-alive, shutdown, and every other path) and skips the
machinery for the common request only:

    POST /predict or /events, HTTP/1.x, a Content-Length within `max_body_bytes`, no
    `Expect`, no upgrade, nothing else in progress on the connection, the worker ready,
    and the whole body in the bytes this `data_received` call parsed.

Such a request is answered from the parser's callbacks through `App.answer` (what the ASGI
handlers answer through too) and written in one `write`, byte for byte the head uvicorn
writes: its status line, its default headers (`date`), then the answer's. Anything else,
including a body that has not all arrived (which then gets `[serve] body_timeout_s`),
goes the ASGI way, and so does everything if this uvicorn lacks what the protocol relies
on (`usable`); `tests/router/test_http_fast.py` holds the two paths to the same bytes.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from router.app import App
from router.listeners import AdminSplit, is_admin_listener
from router.raw_asgi import framing

HOT_PATHS = {b"/predict": True, b"/events": False}  # the raw URL -> is /predict
# What this protocol reads or sets on uvicorn's, checked once per connection (and `url`,
# which uvicorn sets as each request begins).
UVICORN_STATE = (
    "parser",
    "cycle",
    "pipeline",
    "flow",
    "server_state",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "access_log",
    "limit_concurrency",
    "expect_100_continue",
    "headers",
    "loop",
    "transport",
)
logger = logging.getLogger("uvicorn.error")

_default_head: tuple[object, bytes] = (None, b"")  # (uvicorn's default headers list, bytes)


def _head(status: int, default_headers: list[tuple[bytes, bytes]], kind: bytes, n: int) -> bytes:
    """The response head uvicorn writes for these headers (it replaces the default headers'
    list when the `date` changes, once a second: the joined bytes are kept for the list)."""
    global _default_head
    if _default_head[0] is not default_headers:
        joined = b"".join(b"%s: %s\r\n" % (name, value) for name, value in default_headers)
        _default_head = (default_headers, joined)
    return b"%s%scontent-type: %s\r\ncontent-length: %d\r\n" % (
        STATUS_LINE[status],
        _default_head[1],
        kind,
        n,
    )


def find_app(app: Any) -> tuple[App | None, AdminSplit | None]:
    """rampart's `App` under uvicorn's wrappers (ProxyHeadersMiddleware) and `AdminSplit`."""
    split = None
    for _ in range(8):
        if isinstance(app, App):
            return app, split
        if isinstance(app, AdminSplit):
            split = app
        app = getattr(app, "app", None)
    return None, None


class FastHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot: App | None = None
        self.hot_requests = 0  # answered in place on this connection (tests read it)
        self._fast: bool | None = None  # the request being parsed: None, or is it /predict
        self._fast_body = b""
        self._content_type: bytes | None = None
        self._limit = 0  # [serve] max_body_bytes
        self._idle = False  # answered in place: arm keep-alive once the bytes are parsed

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        app, split = find_app(self.app)
        usable = all(hasattr(self, name) for name in UVICORN_STATE)
        if app is None or not usable or self.access_log or self.limit_concurrency is not None:
            return
        # The admin listener serves no /predict: its requests go the ASGI way (a 404).
        if split is not None and is_admin_listener(self.server, split.admin):
            return
        self.hot = app
        self._limit = app.config.serve.max_body_bytes

    # -- the parser's callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # uvicorn's, but the ASGI scope is built only for a request that goes the ASGI way.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        self._fast = self._eligible()
        if self._fast is None:
            self._asgi_headers_complete()
        else:
            self._fast_body = b""

    def _asgi_headers_complete(self) -> None:
        """uvicorn's own handling from here: its scope for this request (as its
        `on_message_begin` builds it, keeping what the parser gave since), then its cycle."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.expect_100_continue = url, expect
        self.headers.extend(headers)  # the list the new scope holds
        HttpToolsProtocol.on_headers_complete(self)

    def _eligible(self) -> bool | None:
        app = self.hot
        if app is None or app.worker is None or self.expect_100_continue:
            return None
        predict = HOT_PATHS.get(self.url)
        if predict is None or self.parser.get_method() != b"POST":
            return None
        if self.parser.should_upgrade() or self.flow.write_paused or self.pipeline:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None
        self._content_type, declared = framing(self.headers)
        if declared is None or not declared.isdigit() or int(declared) > self._limit:
            return None  # chunked, or over the limit: refused the ASGI way, before reading
        return predict

    def on_body(self, body: bytes) -> None:
        if self._fast is None:
            super().on_body(body)
        else:
            self._fast_body += body

    def on_message_complete(self) -> None:
        if self._fast is None:
            super().on_message_complete()
            return
        predict, self._fast = self._fast, None
        self._answer(predict, self._fast_body)

    def data_received(self, data: bytes) -> None:
        self._idle = False
        super().data_received(data)
        if self._fast is not None and not self.transport.is_closing():
            # The body is still on its way: the ASGI path, with its body deadline.
            self._fast, body = None, self._fast_body
            self._fast_body = b""
            self._asgi_headers_complete()
            if body:
                self.cycle.body += body
                self.cycle.message_event.set()
        elif self._idle and self._quiet():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _quiet(self) -> bool:
        """Nothing in progress on the connection: the keep-alive timer may run."""
        done = self.cycle is None or self.cycle.response_complete
        return done and not self.transport.is_closing()

    # -- answering in place ------------------------------------------------------------------------
    def _answer(self, predict: bool, body: bytes) -> None:
        app = self.hot
        assert app is not None and app.worker is not None  # checked by _eligible
        worker = app.worker
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        try:
            content_type = self._content_type
            status, out, kind, pair = app.answer(worker, predict, content_type, body, self.headers)
        except Exception:  # a bug: answered as uvicorn answers an ASGI app's exception
            logger.exception("Exception in ASGI application")
            self._write_500()
            return
        head = _head(status, self.server_state.default_headers, kind, len(out))
        close = b"" if keep_alive else b"connection: close\r\n"
        self.transport.write(b"%s%s\r\n%s" % (head, close, out))
        self.server_state.total_requests += 1
        self.hot_requests += 1
        if not keep_alive:
            self.transport.close()
        else:
            self._idle = True  # the keep-alive timer (unset as the bytes came) is armed after them
        if pair is not None:
            worker.score_pair(pair)  # the answer is sent

    def _write_500(self) -> None:
        text, kind = b"Internal Server Error", b"text/plain; charset=utf-8"
        head = _head(500, self.server_state.default_headers, kind, len(text))
        self.transport.write(b"%sconnection: close\r\n\r\n%s" % (head, text))
        self.server_state.total_requests += 1
        self.transport.close()
