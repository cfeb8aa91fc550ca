"""Fuzzing a real `rampart serve --workers 2` mid-rollout: every request gets an answer.

- schemathesis, from the server's own `/openapi.json`: generated bodies in both content
  types; checked: not a server error, and the answer conforms to the schema.
- a raw fuzz over real keep-alive connections (an h11 client on a socket): random bytes,
  mutated valid bodies, odd but valid headers, declared lengths over the limit, with and
  without the admin token. Every request gets an answer: 2xx, or 4xx with a reason code
  (the `Reject` enum; an admin command the evaluator refuses names its own), or 503
  `model_unavailable`; and the connection is closed only when the answer says so.
- afterwards, on the server side: no /predict took longer, in the handler, than the
  challenger's timeout plus the champion's model time (the latency the workers record).

Budgets are fixed (example counts, not time): well under a minute in all.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Iterator
from typing import Any

import h11
import msgpack
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.server import ADMIN_TOKEN, Server, register_pair, serving

from router import hdr
from router import snapshot as snap
from router.layout import REJECT_REASONS
from router.shared_memory import SharedMemory

TIMEOUT_MS = 50.0  # [serve] challenger_timeout_ms (the default, said out loud)
# The champion's model time on top of it, on a shared 2-core machine: the tiny test model
# runs in tens of microseconds; the rest is room for the scheduler, not for the model.
MODEL_TIME_MS = 150.0
BODY_TIMEOUT_S = 2.0  # [serve] body_timeout_s, shorter than the default for the slow-body test
RAW_REQUESTS = 300
ROW = [0.1, 0.2, 0.3, 0.4]
VALID = {"request_id": "r1", "features": [ROW], "segment": {"device_type": "mobile"}}


def _msgpack_ints(value: Any) -> Any:
    """msgpack carries 64-bit integers; a larger one goes as the float JSON would give."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_msgpack_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _msgpack_ints(v) for k, v in value.items()}
    return value


@schemathesis.serializer("application/msgpack")
def _to_msgpack(ctx: Any, value: Any) -> bytes:
    return bytes(msgpack.packb(_msgpack_ints(value), use_bin_type=True))


@schemathesis.deserializer("application/msgpack")
def _from_msgpack(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = register_pair(tmp_path_factory.mktemp("fuzz-server") / "state")
    config = state.parent / "rampart.toml"
    config.write_text(
        f"[serve]\nchallenger_timeout_ms = {TIMEOUT_MS}\nbody_timeout_s = {BODY_TIMEOUT_S}\n"
    )
    with serving(state, workers=2, config=config) as s:
        s.start_rollout("2")  # both arms in play
        yield s


# -- schemathesis ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/predict", "/events", "/status"])
def test_server_answers_conform_to_its_openapi_schema(server: Server, path: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    method = "GET" if path == "/status" else "POST"
    operation = schema[path][method]
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
    ]

    session = requests.Session()  # keep-alive, as an ad server's pool

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(base_url=server.url, session=session, checks=checks, timeout=10)

    with session:
        run()


# -- the raw fuzz ------------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection: h11 frames, the socket is real."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h11 = h11.Connection(h11.CLIENT)
        self.opened = 1

    def reopen(self) -> None:
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.h11 = h11.Connection(h11.CLIENT)
        self.opened += 1

    def request(
        self, path: str, headers: list[tuple[str, str | bytes]], body: bytes | None
    ) -> tuple[h11.Response, bytes]:
        """Send one request (a body given whole, or none) and read its whole answer. A
        connection the server closed without saying so fails here."""
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.reopen()
        elif self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        hs = [("host", "127.0.0.1"), *headers]
        out = self.h11.send(h11.Request(method="POST", target=path, headers=hs))
        if body is not None:
            out += self.h11.send(h11.Data(data=body))
        out += self.h11.send(h11.EndOfMessage())
        # The server may answer and close before a refused body is all sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(out)
        response = None
        data = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                chunk = self.sock.recv(65536)
                assert chunk, f"{path}: connection closed without an answer"
                self.h11.receive_data(chunk)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, data

    def close(self) -> None:
        self.sock.close()


def _mutate(rng: random.Random, b: bytes) -> bytes:
    out = bytearray(b)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(3)
        if op == 0 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 1:
            out.insert(rng.randrange(len(out) + 1), rng.randrange(256))
        elif out:
            del out[rng.randrange(len(out))]
    return bytes(out)


def _value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 3 else 5)
    if pick == 0:
        return rng.choice([None, True, False, 0, -1, 2**40, 0.5, 1e308, "", "r1"])
    if pick == 1:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(6)))
    if pick == 2:
        return rng.uniform(-2, 2)
    if pick == 3:
        return rng.choice(["impression", "click", "2", "request_id", "f0"])
    if pick == 4:
        return rng.randrange(-5, 5)
    if pick in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["request_id", "features", "segment", "events", "token", "type", "prediction", "version"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _encode(value: Any, kind: str) -> bytes:
    if kind == "application/msgpack":
        return bytes(msgpack.packb(value, use_bin_type=True))
    return json.dumps(value).encode()


ODD_HEADERS: list[list[tuple[str, str | bytes]]] = [
    [],
    [("content-type", "application/json; charset=utf-8")],
    [("content-type", "APPLICATION/MSGPACK")],
    [("content-type", "text/plain")],
    [("content-type", b"application/\xffjson")],
    [("content-type", "application/json"), ("content-type", "application/msgpack")],
    [("x-odd", "a" * 6000)],
    [("x-latin", b"caf\xe9 \x80\xfe")],
    [("authorization", "Bearer")],
    [("authorization", "Basic " + "x" * 40)],
    [("authorization", b"Bearer \xff\xfe")],
    [("expect", "100-continue")],
]


def _raw_request(
    rng: random.Random,
) -> tuple[str, list[tuple[str, str | bytes]], bytes | None]:
    path = rng.choice(
        ["/predict", "/predict", "/events", "/events", "/admin/rollout/start", "/admin/rollout/x"]
    )
    kind = rng.choice(["application/json", "application/msgpack"])
    mode = rng.randrange(6)
    if mode == 0:
        body: bytes | None = _encode(_value(rng), kind)
    elif mode == 1:
        body = _mutate(rng, _encode(VALID, kind))
    elif mode == 2:
        body = rng.randbytes(rng.randrange(64))
    elif mode == 3:
        body = _encode(VALID, kind)
    elif mode == 4:
        body = None  # no body at all
    else:
        body = b"x" * rng.choice([70_000, 1_100_000])  # over the admin's or every limit
    headers: list[tuple[str, str | bytes]] = [("content-type", kind)]
    if rng.random() < 0.3:
        headers = [*rng.choice(ODD_HEADERS)] or headers
    if rng.random() < 0.5 and not any(k == "authorization" for k, _ in headers):
        headers.append(("authorization", f"Bearer {ADMIN_TOKEN}"))
    if body is not None and rng.random() < 0.7:
        headers.append(("content-length", str(len(body))))
    elif body is not None:
        headers.append(("transfer-encoding", "chunked"))
    return path, headers, body


def _decoded(response: h11.Response, body: bytes) -> Any:
    kind = dict(response.headers).get(b"content-type", b"")
    if kind.startswith(b"application/msgpack"):
        return msgpack.unpackb(body, raw=False)
    return json.loads(body)


def _check_answer(path: str, response: h11.Response, body: bytes) -> None:
    status = response.status_code
    what = f"{path} answered {status}: {body[:200]!r}"
    assert status < 500 or status == 503, what
    if 200 <= status < 300:
        return
    answer = _decoded(response, body)
    if path.startswith("/admin/") and status in (202, 409):
        assert answer["ok"] is False and isinstance(answer["error"], str), what
    elif status == 503:
        assert answer["error"] == "model_unavailable", what
    else:
        assert answer["error"] in REJECT_REASONS, what


def test_raw_fuzz_gets_every_request_an_answer_on_keep_alive_connections(server: Server) -> None:
    rng = random.Random(20261126)
    conn = Connection(server.port)
    statuses: dict[int, int] = {}
    try:
        for _ in range(RAW_REQUESTS):
            path, headers, body = _raw_request(rng)
            response, answer = conn.request(path, headers, body)
            _check_answer(path, response, answer)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    finally:
        conn.close()
    assert statuses.get(200, 0) > 0 and statuses.get(413, 0) > 0, statuses
    # Reconnected only after answers that said `Connection: close` (the 413s, the only
    # bodies refused unread): a silently closed connection fails in `request` instead.
    assert conn.opened - 1 <= statuses[413]


def _length(body: bytes) -> tuple[str, str]:
    return ("content-length", str(len(body)))


def test_refused_non_utf8_admin_body_leaves_the_connection_usable(server: Server) -> None:
    conn = Connection(server.port)
    auth = ("authorization", f"Bearer {ADMIN_TOKEN}")
    try:
        for body in (b"\xff\xfe\xfd", b'{"version": "\xff"}', b"\x80"):
            headers = [("content-type", "application/json"), auth, _length(body)]
            response, answer = conn.request("/admin/rollout/start", headers, body)
            assert response.status_code == 400, answer
            assert json.loads(answer)["error"] == "malformed_body"
            valid = json.dumps(VALID).encode()
            headers = [("content-type", "application/json"), _length(valid)]
            response, answer = conn.request("/predict", headers, valid)
            assert response.status_code == 200, answer
        assert conn.opened == 1
    finally:
        conn.close()


def test_body_declared_over_the_limit_is_refused_unread_and_closes(server: Server) -> None:
    conn = Connection(server.port)
    try:
        sock = conn.sock
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 50000000\r\nexpect: 100-continue\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 413"), answer[:200]
        assert b"100 continue" not in head and b"connection: close" in head
        assert b'"error":"body_too_large"' in answer
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "sent"), [("/predict", b""), ("/predict", b'{"req'), ("/admin/rollout/start", b"{")]
)
def test_body_that_stops_arriving_gets_408_and_a_close(
    server: Server, path: str, sent: bytes
) -> None:
    """Headers, then part of the body (or none), then nothing: the request is answered 408
    `body_timeout` by its deadline and the connection closed, as nginx's client_body_timeout
    does; without a deadline the request waited for as long as the client kept it open."""
    before = _rejected(server, "body_timeout")
    conn = Connection(server.port)
    try:
        sock = conn.sock
        sock.settimeout(60)  # far past the deadline: a missing answer fails, it does not hang
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: 100\r\n\r\n".encode()
            + sent
        )
        with requests.post(  # meanwhile the worker answers others
            f"{server.url}/predict", json=VALID, timeout=30
        ) as other:
            assert other.status_code == 200
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after its answer
            answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 408"), answer[:200]
        assert b"connection: close" in head and b'"error":"body_timeout"' in answer
    finally:
        conn.close()
    assert _rejected(server, "body_timeout") == before + 1


def _rejected(server: Server, reason: str) -> int:
    return int(server.status()["rejected"].get(reason, 0))


def test_no_predict_took_longer_than_the_challenger_timeout_plus_model_time(
    server: Server,
) -> None:
    """Read after the fuzz tests (same module, in order): the handler latency the workers
    recorded for every /predict, both arms, from the shared memory itself."""
    shm = SharedMemory.attach(server.state)
    try:
        totals = snap.take(shm).slots
    finally:
        shm.close()
    recorded = [t.latency for t in totals if t.latency.any()]
    assert recorded, "no /predict was recorded"
    worst_us = max(
        hdr.highest_equivalent_value(hdr.value_from_index(int(counts.nonzero()[0][-1])))
        for counts in recorded
    )
    assert worst_us <= (TIMEOUT_MS + MODEL_TIME_MS) * 1000, f"slowest /predict: {worst_us} µs"
