from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import pytest
import uvloop
from support.models import linear_reference, write_model
from support.net import free_port

from bench.loadgen import (
    LoadResult,
    ProtocolError,
    TargetNotAllowed,
    main,
    parse_url,
    plot_curves,
    read_bodies,
    read_curve,
    run_load,
)

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = [0.5, -0.25, 1.0, 0.125]  # the bare server's model: sigmoid(x @ WEIGHTS + BIAS)
BIAS = -0.5
SUMMARY_KEYS = {
    "mode", "rate_asked", "rate_achieved", "requests", "responses", "duration_s", "errors",
    "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "kept_up", "generator_lag_ms",
}  # fmt: skip
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real `python -m bench.bare_server` on 127.0.0.1; yields its port."""
    tmp = tmp_path_factory.mktemp("bare_server")
    model = write_model(tmp / "tiny.onnx", weights=WEIGHTS, bias=BIAS)
    port = free_port()
    cmd = [sys.executable, "-m", "bench.bare_server", "--model", str(model), "--port", str(port)]
    log = tmp / "stderr.log"
    # `-m` from the repository root puts it on sys.path, installed or not.
    with log.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bare_server exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _body(request_id: str = "r1") -> bytes:
    return msgpack.packb({"request_id": request_id, "features": [[1.0, 2.0, 3.0, 4.0]]})


class _TinyServer(asyncio.Protocol):
    """Reads Content-Length-framed requests and hands each one's transport to `respond`."""

    def __init__(self, respond: Callable[[asyncio.Transport], None]) -> None:
        self.respond = respond
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            assert self.transport is not None
            self.respond(self.transport)


def _with_tiny_server(
    respond: Callable[[asyncio.Transport], None],
    load: Callable[[int], Awaitable[LoadResult]],
) -> LoadResult:
    async def go() -> LoadResult:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _TinyServer(respond), "127.0.0.1", 0)
        try:
            return await load(server.sockets[0].getsockname()[1])
        finally:
            server.close()

    return uvloop.run(go())


def test_bare_server_predicts_sigmoid(bare_server: int) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]
    request = urllib.request.Request(
        f"http://127.0.0.1:{bare_server}/predict",
        data=msgpack.packb({"request_id": "a", "features": rows}),
        headers={"Content-Type": "application/msgpack"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = msgpack.unpackb(response.read())
    expected = linear_reference(np.array(rows), WEIGHTS, BIAS)
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5)


def test_run_load_open_loop_against_bare_server(bare_server: int, tmp_path: Path) -> None:
    result = uvloop.run(
        run_load(
            "127.0.0.1", bare_server, "/predict", [_body("a"), _body("b")], "application/msgpack",
            rate=200, duration_s=2.0, warmup_s=0.5, connections=4,
        )
    )  # fmt: skip
    summary = result.summary
    assert not SUMMARY_KEYS - summary.keys()
    assert summary["mode"] == "open"
    # 1.5 s measured at a constant 200/s is 300 scheduled requests.
    assert abs(summary["requests"] - 300) <= 1
    assert summary["responses"] == summary["requests"]
    assert summary["errors"]["total"] == 0
    assert summary["rate_achieved"] == pytest.approx(200, rel=0.1)
    assert result.histogram.get_total_count() == summary["responses"]
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    json.loads(json.dumps(summary))  # JSON-ready as it is

    hgrm = tmp_path / "run.hgrm"
    result.write(json_path=tmp_path / "run.json", hgrm_path=hgrm)
    text = hgrm.read_text()
    assert text.splitlines()[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert "#[Mean" in text and "#[Max" in text
    curve = read_curve(hgrm)
    assert len(curve.percentiles) >= 10
    assert curve.percentiles[-1] == pytest.approx(100)
    assert curve.values_ms[-1] == pytest.approx(summary["max_ms"], rel=0.01)
    assert read_curve(tmp_path / "run.json").values_ms == pytest.approx(curve.values_ms, rel=1e-3)

    pytest.importorskip("matplotlib", reason="matplotlib not installed: plot not tested")
    png = tmp_path / "run.png"
    plot_curves([curve, read_curve(tmp_path / "run.json")], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loadgen_cli_writes_json_hgrm_and_plot(bare_server: int, tmp_path: Path) -> None:
    bodies = tmp_path / "requests.msgpack"
    bodies.write_bytes(_body("a") + _body("b") + _body("c"))
    out = {ext: tmp_path / f"run.{ext}" for ext in ("json", "hgrm", "png")}
    args = ["--url", f"http://127.0.0.1:{bare_server}/predict", "--rate", "100"]
    args += ["--duration", "0.8", "--warmup", "0.2", "--connections", "2"]
    args += ["--body-file", str(bodies), "--json", str(out["json"]), "--hgrm", str(out["hgrm"])]
    if importlib.util.find_spec("matplotlib"):
        args += ["--plot", str(out["png"])]
    assert main(args) == 0
    summary = json.loads(out["json"].read_text())
    assert summary["responses"] > 0
    assert summary["errors"]["total"] == 0
    assert read_curve(out["hgrm"]).percentiles[-1] == pytest.approx(100)
    if importlib.util.find_spec("matplotlib"):
        assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_bodies_splits_concatenated_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "three.msgpack"
    bodies = [_body("a"), _body("bb"), msgpack.packb([1, 2])]
    path.write_bytes(b"".join(bodies))
    assert read_bodies(path) == bodies


def test_run_load_open_loop_shows_server_stall_in_every_waiting_request() -> None:
    connections = 4
    stall: dict[str, float] = {}

    def respond(transport: asyncio.Transport) -> None:
        # Once, 0.5 s into the run, stop answering for 300 ms (a GC pause, say).
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = stall.setdefault("first", now) + 0.5
        if now >= start and "until" not in stall:
            stall["until"] = now + 0.3
        if now < stall.get("until", 0):
            loop.call_at(stall["until"], transport.write, OK)
        else:
            transport.write(OK)

    result = _with_tiny_server(
        respond,
        lambda port: run_load(
            "127.0.0.1", port, "/", [b"x"], "text/plain",
            rate=200, duration_s=1.5, warmup_s=0.2, connections=connections,
        ),
    )  # fmt: skip
    stalled = int((result.latencies_us >= 200_000).sum())
    # A closed loop would show at most one slow request per connection; an open loop shows
    # every request scheduled during the stall waiting for it (~20 of them at 200/s).
    assert stalled > connections
    assert result.summary["p99_ms"] >= 200
    assert result.summary["max_ms"] >= 250
    assert result.summary["errors"]["total"] == 0


def test_run_load_closed_loop_stops_at_count() -> None:
    result = _with_tiny_server(
        lambda transport: transport.write(OK),
        lambda port: run_load(
            "127.0.0.1", port, "/", [b"x"], "text/plain",
            rate=None, duration_s=5, count=300, warmup_s=0, connections=3,
        ),
    )  # fmt: skip
    summary = result.summary
    assert summary["mode"] == "closed"
    assert summary["requests"] == summary["responses"] == 300
    assert summary["kept_up"] is None
    assert summary["rate_achieved"] > 0


def test_run_load_chunked_response_fails_clearly() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    with pytest.raises(ProtocolError, match="chunked"):
        _with_tiny_server(
            lambda transport: transport.write(chunked),
            lambda port: run_load(
                "127.0.0.1", port, "/", [b"x"], "text/plain", rate=100, duration_s=1, warmup_s=0
            ),
        )


def test_loadgen_cli_non_loopback_target_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Which hosts are loopback is harness.target's to say (tests/harness/test_target.py).
    assert main(["--url", "http://10.0.0.1:8000/predict", "--rate", "10", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:8000/predict", ("127.0.0.1", 8000, "/predict"), id="v4"),
        pytest.param("http://127.8.9.1/x?y=1", ("127.8.9.1", 80, "/x?y=1"), id="127/8"),
        pytest.param("http://localhost:1/", ("localhost", 1, "/"), id="localhost"),
        pytest.param("http://[::1]:9/p", ("::1", 9, "/p"), id="v6"),
    ],
)
def test_loadgen_loopback_target_accepted(url: str, expected: tuple[Any, ...]) -> None:
    assert parse_url(url) == expected


def test_run_load_non_loopback_host_refused() -> None:
    with pytest.raises(TargetNotAllowed):
        uvloop.run(run_load("192.168.1.1", 80, "/", [b""], "text/plain", rate=1, duration_s=1))
