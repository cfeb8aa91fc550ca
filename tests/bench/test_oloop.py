"""bench/oloop.c against a tiny HTTP/1.1 server on loopback: it sends exactly its schedule,
on time, every body in turn, and counts a server stall for every request due during it."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from support.net import free_port

from bench import bench_predict_clients as clients

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None, reason="no C compiler (cc) to build bench/oloop.c"
)

STALL = b"stall"
STALL_S = 0.2


@dataclass
class Server:
    """Answers every POST with a 2-byte body; `stall` makes it sleep STALL_S first."""

    port: int
    arrivals: list[tuple[int, bytes]] = field(default_factory=list)  # (monotonic ns, body)
    connections: int = 0
    idle_timeout_s: float | None = None  # close a connection idle this long (keep-alive)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), self.idle_timeout_s
                    )
                except TimeoutError:
                    writer.close()
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.arrivals.append((time.monotonic_ns(), body))
                if body == STALL:
                    await asyncio.sleep(STALL_S)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(free_port())
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    done: asyncio.Future[None] = loop.create_future()

    async def serve() -> None:
        s = await asyncio.start_server(srv.handle, "127.0.0.1", srv.port)
        ready.set()
        async with s:
            await done

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield srv
    loop.call_soon_threadsafe(done.set_result, None)
    thread.join(10)
    loop.close()


def test_sends_its_schedule_on_time_with_every_body(server: Server, tmp_path: Path) -> None:
    rate, seconds = 400, 1.5
    bodies = [b"body-%03d" % i for i in range(6)] + [b"id=" + b"#" * 16]
    run = clients.open_loop(
        server.port,
        clients.write_bodies(tmp_path / "b.bin", bodies),
        rate,
        seconds,
        connections=4,
        core=None,
        content_type="text/plain",
    )
    total = int(rate * seconds)
    s = run.summary
    assert (s["scheduled"], s["sent"], s["answered"]) == (total, total, total)
    assert (s["non_2xx"], s["socket_errors"], server.connections) == (0, 0, 4)
    assert len(server.arrivals) == total
    # The bodies rotate: each one as often as the schedule gives it.
    seen = [b for _, b in server.arrivals]
    for i, body in enumerate(bodies[:-1]):
        assert seen.count(body) == len(range(i, total, len(bodies)))
    # The id marker: every request's own id, its index after 4 digits of the client's pid.
    ids = sorted(b for b in seen if b.startswith(b"id="))
    assert [int(b[7:]) for b in ids] == list(range(6, total, len(bodies)))
    assert len({b[3:7] for b in ids}) == 1
    # Nothing leaves before it is due, and the schedule is kept: arrivals spread over the
    # run at the rate asked, not bunched.
    due = run.due_ns()
    first_arrival = server.arrivals[0][0]
    assert first_arrival >= due[0]
    assert (run.jitter_us >= 0).all() and (run.latency_us >= 0).all()
    span = (server.arrivals[-1][0] - first_arrival) / 1e9
    assert abs(span - (total - 1) / rate) < 0.25
    assert np.median(run.jitter_us) < 2000
    report = run.report()
    assert report["kept_up"] and 0 < report["client_cpu_us_per_request"] < 1000


def test_a_stall_counts_for_every_request_due_during_it(server: Server, tmp_path: Path) -> None:
    """One connection: while the server sleeps on `stall`, the requests due behind it wait,
    and their latency runs from their due time (no coordinated omission)."""
    rate, seconds = 200, 1.0  # one request every 5 ms; the stall covers ~40 of them
    bodies = [b"x"] * 50 + [STALL] + [b"x"] * 149
    run = clients.open_loop(
        server.port,
        clients.write_bodies(tmp_path / "b.bin", bodies),
        rate,
        seconds,
        connections=1,
        core=None,
        content_type="text/plain",
    )
    assert run.summary["answered"] == 200
    lat_ms = run.latency_us / 1000
    assert lat_ms[50] >= STALL_S * 1000
    # Request 50 + k was due k * 5 ms after the stall began: it waited the rest of it.
    for k in (1, 10, 30):
        assert lat_ms[50 + k] >= STALL_S * 1000 - k * 5 - 1
    assert run.summary["waited_for_connection"] >= 30
    late = run.jitter_us[51:80] / 1000
    assert (late >= STALL_S * 1000 - np.arange(1, 30) * 5 - 1).all()


def test_keeps_connections_alive_past_the_servers_idle_timeout(
    server: Server, tmp_path: Path
) -> None:
    """A server that closes connections idle for 150 ms (as uvicorn does after 5 s): at a low
    rate every connection is used in turn, and one closed while idle is replaced, never
    counted as a failed request."""
    server.idle_timeout_s = 0.15
    run = clients.open_loop(
        server.port,
        clients.write_bodies(tmp_path / "b.bin", [b"x"]),
        20,
        1.5,
        connections=8,
        core=None,
        content_type="text/plain",
    )
    s = run.summary
    assert (s["answered"], s["socket_errors"], s["non_2xx"]) == (30, 0, 0)
