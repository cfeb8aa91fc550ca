"""A small HTTP/1.1 keep-alive connection pool on raw asyncio protocols, for the simulator.

`Pool.submit(request, done)` writes a complete, pre-encoded request on an idle connection (or a
new one, up to `limit`) and calls ``done(status, body, None)`` with the answer, or
``done(0, b"", kind)`` when the connection failed under it. One request is outstanding per
connection; when every connection is busy, requests wait in submission order (`urgent` ones
first). Answers need a Content-Length (what uvicorn sends); chunked bodies are not parsed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

from bench.loadgen import error_kind

Done = Callable[[int, bytes, str | None], None]


class Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.open = 0  # connections connected or connecting
        self.busy = 0  # requests written or waiting, not answered
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.waiting: deque[tuple[bytes, Done]] = deque()
        self.closed = False
        self._connecting: set[asyncio.Task[None]] = set()

    def free(self) -> bool:
        """Would a request submitted now go out at once?"""
        return not self.waiting and (bool(self.idle) or self.open < self.limit)

    def submit(self, request: bytes, done: Done, urgent: bool = False) -> None:
        self.busy += 1
        if self.idle:
            self.idle.pop().send(request, done)  # the most recently used: least likely timed out
        elif self.open < self.limit:
            self.open += 1
            task = asyncio.get_running_loop().create_task(self._connect(request, done))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
        elif urgent:
            self.waiting.appendleft((request, done))
        else:
            self.waiting.append((request, done))

    async def _connect(self, request: bytes, done: Done) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as e:
            self.open -= 1
            self.busy -= 1
            done(0, b"", "connect_" + error_kind(e))
            return
        conn.send(request, done)

    def release(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
        elif self.waiting:
            conn.send(*self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and not self.closed and self.open < self.limit:
            request, done = self.waiting.popleft()
            self.busy -= 1  # submit counts it again
            self.submit(request, done, urgent=True)

    def close(self) -> None:
        self.closed = True
        for task in self._connecting:
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        self.idle.clear()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # bytes of the whole answer, once its head is parsed
        self.head_len = 0
        self.status = 0
        self.close_after = False
        self.done: Done | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.pool.connections.add(self)

    def send(self, request: bytes, done: Done) -> None:
        self.done = done
        assert self.transport is not None
        if self.transport.is_closing():
            self.connection_lost(ConnectionResetError())
            return
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._parse_head(bytes(buf[:end]), end + 4):
                return
        if len(buf) < self.need:
            return
        body = bytes(buf[self.head_len : self.need])
        del buf[: self.need]
        self.need = -1
        done, self.done = self.done, None
        self.pool.busy -= 1
        if self.close_after:
            self.close()
        else:
            self.pool.release(self)
        if done is not None:
            done(self.status, body, None)

    def _parse_head(self, head: bytes, head_len: int) -> bool:
        lower = head.lower()
        i = lower.find(b"\r\ncontent-length:")
        if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit() or i < 0:
            self._fail("bad_response")
            return False
        j = lower.find(b"\r\n", i + 17)
        self.status = int(head[9:12])
        self.head_len = head_len
        self.need = head_len + int(lower[i + 17 : j if j >= 0 else len(lower)])
        self.close_after = b"\r\nconnection: close" in lower
        return True

    def _fail(self, kind: str) -> None:
        done, self.done = self.done, None
        if done is not None:
            self.pool.busy -= 1
            done(0, b"", kind)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.pool.lost(self)
        self._fail(error_kind(exc) if exc else "closed")
