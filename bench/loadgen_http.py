"""The load generator's HTTP/1.1 client: raw `asyncio.Protocol` connections and the state of a run.

Connections are keep-alive, one request outstanding each, on uvloop. Requests are
pre-encoded (`build_requests`). A response is framed by its Content-Length (204 and 304
without one); interim, chunked or unframed responses stop the run with a `ProtocolError`.
Each answered request is appended to the run's raw arrays (start, last byte, status); a
connection that fails under a request counts it lost and reconnects until the run stops.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from collections.abc import Sequence
from typing import cast

from harness.target import error_kind

_RECONNECT_DELAY_S = 0.01


class LoadgenError(Exception):
    pass


class ProtocolError(LoadgenError):
    pass


def build_requests(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str,
    method: str = "POST",
) -> list[bytes]:
    """Complete HTTP/1.1 requests (head + body), one per body."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
    return [b"%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(b), b) for b in bodies]


class Run:
    """State shared by the dispatcher and the connections of one run."""

    def __init__(self, requests: list[bytes], closed_loop: bool, limit: int) -> None:
        self.requests = requests
        self.closed_loop = closed_loop
        self.limit = limit
        self.t0_ns = 0
        self.warmup_end_ns = 0
        self.end_ns = 0
        self.issued = 0
        self.inflight = 0
        self.stopping = False
        self.fatal: ProtocolError | None = None
        self.idle: list[Connection] = []
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.max_backlog = 0
        self.connections: set[Connection] = set()
        # One row per answered request: start (intended or sent), last byte, HTTP status.
        self.starts = array("q")
        self.dones = array("q")
        self.statuses = array("H")
        self.lags = array("q")  # dispatcher lateness, measured requests only
        self.conn_errors: dict[str, int] = {}
        self.lost = 0  # measured requests whose connection failed under them
        self.reconnects: set[asyncio.Task[None]] = set()

    def next_request(self) -> bytes:
        request = self.requests[self.issued % len(self.requests)]
        self.issued += 1
        return request

    def count_error(self, kind: str, start_ns: int) -> None:
        if start_ns >= self.warmup_end_ns:
            self.conn_errors[kind] = self.conn_errors.get(kind, 0) + 1

    def fail(self, error: ProtocolError) -> None:
        if self.fatal is None:
            self.fatal = error
        self.stopping = True


class Connection(asyncio.Protocol):
    __slots__ = (
        "buf", "close_after", "host", "need", "port", "run", "start_ns", "status", "transport"
    )  # fmt: skip

    def __init__(self, run: Run, host: str, port: int) -> None:
        self.run = run
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # bytes of the whole response, once its head is parsed
        self.status = 0
        self.close_after = False
        self.start_ns = -1  # start of the request in flight, -1 when idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.run.connections.add(self)

    def ready(self) -> None:
        """Take work: the backlog (open loop), the next request (closed loop) or go idle."""
        run = self.run
        if run.stopping:
            return
        if run.closed_loop:
            now = time.perf_counter_ns()
            if now < run.end_ns and run.issued < run.limit:
                self.send(run.next_request(), now)
        elif run.backlog:
            start_ns, request = run.backlog.popleft()
            self.send(request, start_ns)
        else:
            run.idle.append(self)

    def send(self, request: bytes, start_ns: int) -> None:
        self.start_ns = start_ns
        self.run.inflight += 1
        try:  # noqa: SIM105 (contextlib.suppress costs more on this path)
            self.transport.write(request)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # closed under us (peer's FIN seen): connection_lost counts the request lost

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.parse_head(bytes(buf[:end]), end + 4)
            if self.need < 0:
                return
        if len(buf) < self.need:
            return
        done = time.perf_counter_ns()
        run = self.run
        run.starts.append(self.start_ns)
        run.dones.append(done)
        run.statuses.append(self.status)
        run.inflight -= 1
        self.start_ns = -1
        del buf[: self.need]
        self.need = -1
        if self.close_after:
            self.drop()
        else:
            self.ready()

    def parse_head(self, head: bytes, head_len: int) -> None:
        if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
            self.protocol_error(f"malformed status line {head[:40]!r}")
            return
        status = int(head[9:12])
        if status < 200:
            self.protocol_error(f"interim {status} responses are not supported")
            return
        lower = head.lower()
        if b"\r\ntransfer-encoding:" in lower:
            self.protocol_error("chunked (Transfer-Encoding) responses are not supported")
            return
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i + 17)
            length = int(lower[i + 17 : j if j >= 0 else len(lower)])
        elif status in (204, 304):
            length = 0
        else:
            self.protocol_error(f"{status} response without Content-Length")
            return
        self.status = status
        self.need = head_len + length
        self.close_after = b"\r\nconnection: close" in lower

    def protocol_error(self, what: str) -> None:
        self.run.fail(ProtocolError(f"{self.host}:{self.port}: {what}; bench.loadgen stops"))
        self.drop()

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.connections.discard(self)
        if self in run.idle:
            run.idle.remove(self)
        if self.start_ns >= 0:
            run.inflight -= 1
            if not run.stopping and self.start_ns >= run.warmup_end_ns:
                run.lost += 1
                run.count_error(error_kind(exc) if exc else "closed", self.start_ns)
            self.start_ns = -1
        if not run.stopping:
            task = asyncio.get_running_loop().create_task(_reconnect(run, self.host, self.port))
            run.reconnects.add(task)
            task.add_done_callback(run.reconnects.discard)


async def connect(run: Run, host: str, port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(run, host, port), host, port)
    return conn


async def _reconnect(run: Run, host: str, port: int) -> None:
    while not run.stopping:
        try:
            conn = await connect(run, host, port)
        except OSError as exc:
            run.count_error("connect_" + error_kind(exc), time.perf_counter_ns())
            await asyncio.sleep(_RECONNECT_DELAY_S)
        else:
            conn.ready()
            return
