"""An HTTP egress proxy on loopback, as a pod's egress gateway would be: it tunnels
`CONNECT host:port` (https) and forwards absolute-form requests (`POST http://host/path`),
and records each request line with its Proxy-Authorization header.

    with egress_proxy() as proxy:
        alerter = Alerter(..., proxy=proxy.url)
        proxy.wait_for(1)   # [Seen(method="CONNECT", target="127.0.0.1:443", auth="Basic …")]
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    auth: str | None


class Proxy:
    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[Seen] = []
        self.cond = threading.Condition()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[Seen]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.seen) >= n, timeout_s), (
                f"{len(self.seen)} of {n} requests reached the proxy in {timeout_s:g} s"
            )
            return list(self.seen)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        head = self.rfile.readline(65536).decode("latin-1").rstrip("\r\n")
        headers: list[tuple[str, str]] = []
        while line := self.rfile.readline(65536).decode("latin-1").rstrip("\r\n"):
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        method, target, version = head.split(" ", 2)
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        proxy = self.server.proxy
        with proxy.cond:
            proxy.seen.append(Seen(method, target, auth))
            proxy.cond.notify_all()
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(upstream)
            return
        url = urlsplit(target)  # absolute form: forward with the origin-form path
        upstream = socket.create_connection((url.hostname, url.port or 80), timeout=10)
        kept = [(k, v) for k, v in headers if not k.lower().startswith("proxy-")]
        request = f"{method} {url.path or '/'} {version}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in kept if k.lower() != "connection"
        )
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        upstream.sendall((request + "connection: close\r\n\r\n").encode("latin-1"))
        upstream.sendall(self.rfile.read(length))
        with upstream:  # one request per connection: the answer, then both sides close
            while data := upstream.recv(65536):
                self.wfile.write(data)

    def _pipe(self, upstream: socket.socket) -> None:
        """Bytes both ways until either side closes (the client's rest of the request, the
        upstream's whole answer)."""
        client = self.connection

        def down() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=down, daemon=True)
        thread.start()
        with contextlib.suppress(OSError):
            while data := self.rfile.read1(65536):  # what the header read buffered comes first
                upstream.sendall(data)
        thread.join(10)
        upstream.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False  # a tunnel the client keeps open must not hold up the shutdown
    allow_reuse_address = True
    proxy: Proxy


@contextlib.contextmanager
def egress_proxy() -> Iterator[Proxy]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.proxy = Proxy(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.proxy
    finally:
        server.shutdown()
        server.server_close()
