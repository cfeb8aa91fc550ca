"""Benchmark: CPU per /predict through uvicorn's protocol, answered in place or the ASGI way.

In one process, without sockets: the same raw request bytes (one row in msgpack, the bodies of
`bench.bench_predict`) are fed to `data_received` of a `router.http_fast.FastHttpToolsProtocol`
and of uvicorn's own `HttpToolsProtocol`, both serving one `router.app.App` (a real state
directory, the demo champion in slot 0, no rollout; as in `bench.bench_hotpath`), each
followed by one turn of the event loop (where the ASGI way's task runs). The transport keeps
only counts. What differs is what the protocol does per request on top of the parser and
rampart's own work: the ASGI machinery, or not; the `write` syscalls it saves are not in it.

Rounds alternate A B B A; each times `--n` requests with `time.process_time_ns`; medians.

    taskset -c 0 python -m bench.bench_http_fast [--rounds 9] [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bench.bench_hotpath import rampart_app
from bench.bench_predict_servers import bodies, n_features
from router.http_fast import FastHttpToolsProtocol


class CountingTransport(asyncio.Transport):
    """Where the answers go: their bytes and writes are counted, nothing is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def compare(rounds: int, n: int) -> dict[str, Any]:
    app = rampart_app(Path(tempfile.mkdtemp(prefix="rampart-bench-")))
    body = bodies(n_features(), 1, False)[0]
    request = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/msgpack\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    config = uvicorn.Config(app, lifespan="off", access_log=False, server_header=False)
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Thu, 26 Nov 2026 12:00:00 GMT")]
    loop = asyncio.get_running_loop()
    contenders: dict[str, tuple[Any, CountingTransport]] = {}
    for name, cls in (("in place", FastHttpToolsProtocol), ("asgi", HttpToolsProtocol)):
        protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)
        transport = CountingTransport()
        protocol.connection_made(transport)
        contenders[name] = (protocol, transport)

    async def run(name: str, count: int) -> float:
        protocol, _ = contenders[name]
        t0 = time.process_time_ns()
        for _ in range(count):
            protocol.data_received(request)
            await asyncio.sleep(0)
        return (time.process_time_ns() - t0) / count / 1000

    writes = {}
    for name in contenders:  # warm, and count the writes per answer
        await run(name, max(n // 10, 100))
        before = contenders[name][1].writes
        await run(name, 100)
        writes[name] = (contenders[name][1].writes - before) / 100
    us: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            us[name].append(await run(name, n))
    med = {name: statistics.median(v) for name, v in us.items()}
    fast: Any = contenders["in place"][0]
    return {
        "us_per_request": med,
        "in_place_over_asgi": med["in place"] / med["asgi"],
        "writes_per_answer": writes,
        "answered_in_place": fast.hot_requests,
        "rounds": us,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default="bench/results/http_fast.json")
    args = parser.parse_args(argv)
    result = uvloop.run(compare(args.rounds, args.n))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
