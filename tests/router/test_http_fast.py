"""`router.http_fast`: a whole /predict or /events answered in place, and everything else as
uvicorn answers it.

1. Two real `rampart serve` on loopback, one answering in place (the default) and one with
   `[serve] answer_in_place = false`: the same raw requests get the same bytes back (the
   `date` header and the answer's token masked), for answers, refusals, HTTP/1.0, a
   `Connection: close`, pipelined requests and a body sent in two parts.
2. The protocol in-process on a real loopback socket (uvloop), its instances at hand: which
   requests were answered in place, the keep-alive timer, the fallbacks, and a bug in the
   answer answered as uvicorn answers an ASGI app's exception.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import uvicorn
import uvloop
from support.in_process import served_state
from support.models import write_model
from support.server import register_pair, serving
from uvicorn.server import ServerState

from router import http_fast
from router.app import App, _warm_up
from router.http_fast import FastHttpToolsProtocol
from router.worker import Worker

ROW = [0.5, -1.0, 2.0, 0.25]


def _request(body: bytes, kind: str = "application/json", *, path: str = "/predict") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


PREDICT = json.dumps({"request_id": "r1", "features": [ROW]}).encode()
PREDICT_MSGPACK = msgpack.packb({"request_id": "r2", "features": [ROW, ROW]})
CASES = {
    "json": _request(PREDICT),
    "msgpack": _request(PREDICT_MSGPACK, "application/msgpack"),
    "malformed": _request(b'{"request_id": '),
    "wrong width": _request(json.dumps({"request_id": "r3", "features": [[1.0]]}).encode()),
    "unsupported type": _request(PREDICT, "text/plain"),
    "events, bad token": _request(
        json.dumps({"events": [{"token": "nope", "type": "impression"}]}).encode(),
        path="/events",
    ),
    "http/1.0": _request(PREDICT).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "connection close": _request(PREDICT).replace(
        b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"
    ),
    "GET": b"GET /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    "pipelined": _request(PREDICT) + _request(PREDICT_MSGPACK, "application/msgpack"),
    "pipelined behind /healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + _request(PREDICT),
}


def _answers(sock: socket.socket, count: int) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """`count` responses read off `sock`: status line, headers, body."""
    buf = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} answers"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        n = int(headers[b"content-length"])
        while len(buf) < n:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
        out.append((status, headers, buf[:n]))
        buf = buf[n:]
    return out


def _masked(answer: tuple[bytes, dict[bytes, bytes], bytes]) -> tuple[Any, ...]:
    """An answer without what differs between two correct answers: the date and the token."""
    status, headers, body = answer
    headers = {**headers, b"date": b"-"}
    if headers.get(b"content-type") == b"application/msgpack":
        decoded = msgpack.unpackb(body)
        decoded["token"] = "-" if "token" in decoded else None
        body = repr(decoded).encode()
    else:
        body = re.sub(rb'"token":"[^"]*"', b'"token":"-"', body)
    return status, sorted(headers.items()), body


def _exchange(port: int, data: bytes, count: int, split: int = 0) -> list[Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split:  # the body in two parts, as a slow client sends it
            sock.sendall(data[:split])
            sock.sendall(data[split:])
        else:
            sock.sendall(data)
        return [_masked(a) for a in _answers(sock, count)]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    root = tmp_path_factory.mktemp("http-fast")
    asgi_config = root / "asgi.toml"
    asgi_config.write_text("[serve]\nanswer_in_place = false\n")
    in_place = register_pair(root / "a" / "state")
    asgi = register_pair(root / "b" / "state")
    with serving(in_place) as a, serving(asgi, config=asgi_config) as b:
        yield a.port, b.port


@pytest.mark.parametrize("case", list(CASES))
def test_in_place_and_asgi_answer_the_same_bytes(two_servers: tuple[int, int], case: str) -> None:
    data = CASES[case]
    count = 2 if case.startswith("pipelined") else 1
    in_place, asgi = (_exchange(port, data, count) for port in two_servers)
    assert in_place == asgi
    if case in ("http/1.0", "connection close"):
        assert (b"connection", b"close") in in_place[0][1]


def test_a_body_in_two_parts_is_answered(two_servers: tuple[int, int]) -> None:
    data = CASES["json"]
    split = len(data) - len(PREDICT) // 2
    in_place, asgi = (_exchange(port, data, 1, split) for port in two_servers)
    assert in_place == asgi and in_place[0][0] == b"HTTP/1.1 200 OK"


# -- in-process, on a real loopback socket --------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    tmp = tmp_path_factory.mktemp("http-fast-app")
    config, shm = served_state(tmp, [write_model(tmp / "a.onnx")])
    application = App(config)
    application.worker = Worker(config)
    _warm_up(application.worker)
    yield application
    application.worker.lock.release()
    shm.close()


class Loopback:
    """The protocol behind a real loopback listener, in this process."""

    def __init__(self, app: App) -> None:
        self.config = uvicorn.Config(app, lifespan="off", access_log=False, server_header=False)
        self.config.load()
        self.state = ServerState()
        self.protocols: list[FastHttpToolsProtocol] = []
        self.timer_running = False

    async def exchange(self, data: bytes, count: int, pause_after: int = 0) -> list[Any]:
        loop = asyncio.get_running_loop()

        def factory() -> FastHttpToolsProtocol:
            p = FastHttpToolsProtocol(self.config, self.state, {}, _loop=loop)
            self.protocols.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if pause_after:
                writer.write(data[:pause_after])
                await writer.drain()
                await asyncio.sleep(0.05)  # let the server parse the first part on its own
                data = data[pause_after:]
            writer.write(data)
            await writer.drain()
            out = [await _read_answer(reader) for _ in range(count)]
            # Before the client closes: is the keep-alive timer running on the idle connection?
            self.timer_running = self.protocols[0].timeout_keep_alive_task is not None
            writer.close()
            return out
        finally:
            server.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


def _run(coro: Any) -> Any:
    return uvloop.run(coro)


def test_a_whole_request_is_answered_in_place_and_the_connection_kept(app: App) -> None:
    loopback = Loopback(app)

    async def go() -> Any:
        answers = await loopback.exchange(CASES["json"] + CASES["msgpack"], 2)
        return answers, loopback.protocols[0]

    answers, protocol = _run(go())
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert protocol.hot_requests == 2 and protocol.cycle is None  # no ASGI cycle at all
    assert loopback.state.total_requests == 2
    assert loopback.timer_running  # idle: the keep-alive timer runs


def test_a_body_still_on_its_way_goes_the_asgi_way(app: App) -> None:
    loopback = Loopback(app)
    data = CASES["json"]

    async def go() -> Any:
        answers = await loopback.exchange(data, 1, pause_after=len(data) - 5)
        return answers, loopback.protocols[0]

    answers, protocol = _run(go())
    assert answers[0][0] == b"HTTP/1.1 200 OK"
    assert protocol.hot_requests == 0 and protocol.cycle is not None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            CASES["json"].replace(b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\n"),
            id="expect-100-continue",
        ),
        pytest.param(CASES["json"].replace(b"/predict", b"/predict?x=1", 1), id="a query string"),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n"
            % (len(PREDICT), PREDICT),
            id="chunked",
        ),
    ],
)
def test_requests_out_of_the_common_case_go_the_asgi_way(app: App, data: bytes) -> None:
    loopback = Loopback(app)
    expect = b"Expect" in data

    async def go() -> Any:
        answers = await loopback.exchange(data, 2 if expect else 1)
        return answers, loopback.protocols[0]

    answers, protocol = _run(go())
    if expect:  # uvicorn's interim answer first
        assert answers[0][0] == b"HTTP/1.1 100 Continue"
    assert answers[-1][0] == b"HTTP/1.1 200 OK", answers
    assert protocol.hot_requests == 0


def test_a_bug_in_the_answer_is_a_500_that_closes_the_connection(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app, "answer", broken)
    loopback = Loopback(app)

    async def go() -> Any:
        answers = await loopback.exchange(CASES["json"], 1)
        return answers, loopback.protocols[0]

    answers, protocol = _run(go())
    status, headers, body = answers[0]
    assert status == b"HTTP/1.1 500 Internal Server Error" and body == b"Internal Server Error"
    assert headers[b"connection"] == b"close" and protocol.transport.is_closing()


def test_without_rampart_s_app_the_protocol_is_uvicorn_s() -> None:
    async def other(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(other, lifespan="off")
    config.load()
    loopback = Loopback.__new__(Loopback)
    loopback.config, loopback.state, loopback.protocols = config, ServerState(), []
    answers = _run(loopback.exchange(CASES["json"], 1))
    assert answers[0][0] == b"HTTP/1.1 204 No Content"
    assert loopback.protocols[0].hot is None and loopback.protocols[0].hot_requests == 0


def test_a_uvicorn_without_what_the_protocol_relies_on_answers_the_asgi_way(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_fast, "UVICORN_STATE", (*http_fast.UVICORN_STATE, "gone_in_0_99"))
    loopback = Loopback(app)
    answers = _run(loopback.exchange(CASES["json"], 1))
    assert answers[0][0] == b"HTTP/1.1 200 OK"
    assert loopback.protocols[0].hot is None and loopback.protocols[0].hot_requests == 0
