"""A local Slack incoming webhook: a rollout's alerts land here for real, over HTTP."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with contextlib.suppress(ValueError):
            self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def slack_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The webhook's URL and the list its payloads are appended to, while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    received: list[dict[str, Any]] = []
    server.received = received  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slack", received
    finally:
        server.shutdown()
        server.server_close()
