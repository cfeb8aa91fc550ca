"""A webhook receiver on loopback: answers with scripted replies and records what it got.

    with webhook() as hook:
        hook.replies.append(Reply(503))           # the first POST gets a 503, then 200s
        alerter = Alerter(f"{hook.url}/slack", None)
        ...
        hook.wait_for(2)                          # until two POSTs have arrived

Alert delivery is tested against it over real HTTP, not a mocked transport.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hold: threading.Event | None = None  # answer only once the test sets it
    drip_s: float = 0.0  # send the answer one byte every `drip_s` (a webhook that drips)


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival


class Hook:
    """What the receiver answers (scripted `replies`, then 200) and what it received."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self.cond = threading.Condition()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[Received]:
        """Until `n` POSTs have arrived; all received so far."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= n, timeout_s), (
                f"{len(self.received)} of {n} webhook calls arrived in {timeout_s:g} s"
            )
            return list(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        hook = self.server.hook
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with hook.cond:
            reply = hook.replies.popleft() if hook.replies else Reply()
            hook.received.append(Received(self.path, body, time.monotonic()))
            hook.cond.notify_all()
        if reply.hold is not None:
            reply.hold.wait(10)
        time.sleep(reply.delay_s)
        try:  # the client may have timed out and gone
            if reply.drip_s:
                self._drip(reply)
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass

    def _drip(self, reply: Reply) -> None:
        """The whole answer, status line first, one byte at a time until the client leaves
        (or the receiver shuts down)."""
        answer = f"HTTP/1.1 {reply.status} OK\r\ncontent-length: 2\r\n\r\nok".encode()
        self.close_connection = True
        for i in range(len(answer)):
            if self.server.stopping.wait(reply.drip_s):
                return
            self.wfile.write(answer[i : i + 1])
            self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    hook: Hook
    stopping: threading.Event


@contextlib.contextmanager
def webhook(tls: ssl.SSLContext | None = None) -> Iterator[Hook]:
    """A receiver on a free loopback port, shut down when the block ends; https with the
    certificate of `tls` (a server-side context) when given."""
    server = _Server(("127.0.0.1", 0), _Handler)
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    server.hook = Hook(f"{scheme}://127.0.0.1:{server.server_address[1]}")
    server.stopping = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.hook
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
