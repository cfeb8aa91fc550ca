"""Benchmark: which well-kept HTTP client keeps the simulator's open loop on one core.

A real `rampart serve` with the shipped champion is pinned to core 0; this process, pinned to
core 1, sends the simulator's own /predict payloads (`harness.simulator.make_batch`: 4
candidates x 30 features, msgpack) open loop at `--rate` for `--seconds`, at most 128 in
flight, one task per request, and decodes every answer, as the simulator does. The clients
alternate round by round (this machine is shared). Reported per run: requests sent and unsent,
late sends (> 10 ms after the intended time), latency from the intended time, and the client
process's CPU per request (user + system time of the send loop and the drain, over requests).

    python -m bench.bench_sim_client [--rate 2000] [--seconds 10] [--rounds 2]
        [--clients httpx aiohttp] [--out bench/results/sim_client.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgpack
import numpy as np
import uvloop
import yarl

from harness import simulator
from harness.scenario_models import model_path
from harness.serve_process import ADMIN_TOKEN, Serve, free_port, pin

CLIENT_CORE = 1
MAX_IN_FLIGHT = 128
LATE_NS = 10_000_000
Post = Callable[[bytes], Awaitable[bytes]]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.asynccontextmanager
async def _client(name: str, url: str) -> AsyncIterator[Post]:
    """`post(body) -> answer body` through client `name`, with the simulator's settings."""
    headers = {"Content-Type": "application/msgpack"}
    if name == "httpx":
        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT
        )
        async with httpx.AsyncClient(limits=limits, timeout=30) as hc:

            async def post_httpx(body: bytes) -> bytes:
                return (await hc.post(url, content=body, headers=headers)).content

            yield post_httpx
    elif name == "aiohttp":
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            auto_decompress=False,
        ) as ac:
            target = yarl.URL(url)

            async def post_aiohttp(body: bytes) -> bytes:
                async with ac.post(target, data=body, headers=headers) as r:
                    return await r.read()

            yield post_aiohttp
    else:
        raise ValueError(f"unknown client {name!r}: httpx or aiohttp")


async def run_client(name: str, url: str, rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop run of client `name` against `url` (the server's base URL)."""
    config = simulator.SimConfig(url, rate, seconds)
    async with aiohttp.ClientSession() as http:
        features = await simulator.champion_features(http, config)
    batch = simulator.make_batch(config, np.random.default_rng(1), features, 0, 4000)
    latencies: list[int] = []
    errors = inflight = late = sent = unsent = 0
    tasks: set[asyncio.Task[None]] = set()
    async with _client(name, f"{url}/predict") as post:

        async def one(body: bytes, due: int) -> None:
            nonlocal inflight, errors
            try:
                answer = msgpack.unpackb(await post(body))
                if not isinstance(answer, dict) or "predictions" not in answer:
                    raise ValueError("not an answer")
                latencies.append(time.perf_counter_ns() - due)
            except Exception:
                errors += 1
            finally:
                inflight -= 1

        period = 1e9 / rate
        cpu0 = _cpu_s()
        t0 = time.perf_counter_ns() + 1_000_000
        end = t0 + int(seconds * 1e9)
        i = 0
        while (due := t0 + int(i * period)) < end:
            now = time.perf_counter_ns()
            if due > now:
                # At least 1 ms: uvloop's timers tick in whole ms, a shorter sleep would spin.
                await asyncio.sleep(max((due - now) / 1e9, 0.001))
                continue
            if now > end + LATE_NS:
                unsent = int((end - due) / period) + 1
                break
            if inflight >= MAX_IN_FLIGHT:
                await asyncio.sleep(0.0005)
                continue
            late += now - due > LATE_NS
            inflight += 1
            sent += 1
            task = asyncio.create_task(one(batch.bodies[i % len(batch.bodies)], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        deadline = time.monotonic() + 10
        while inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        cpu = _cpu_s() - cpu0
    ms = np.asarray(latencies) / 1e6
    return {
        "client": name,
        "rate": rate,
        "seconds": seconds,
        "sent": sent,
        "unsent": unsent,
        "late": late,
        "answered": len(latencies),
        "errors": errors,
        "kept_up": unsent == 0 and late <= 0.01 * max(sent, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "cpu_us_per_request": round(cpu / max(sent, 1) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_sim_client", description=__doc__)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", nargs="+", default=["httpx", "aiohttp"])
    p.add_argument("--out", type=Path, default=Path("bench/results/sim_client.json"))
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp:
        from router.registry import Registry

        state = Path(tmp) / "state"
        registry = Registry(state)
        registry.register(model_path("champion"))
        registry.close()
        config = Path(tmp) / "serve.toml"
        config.write_text("[serve]\nworkers = 1\n")
        env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
        serve = Serve(state, config, free_port(), env)
        serve.start()
        try:
            serve.warm_up()
            if pin(CLIENT_CORE) and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {CLIENT_CORE})
            for _ in range(args.rounds):
                for name in args.clients:
                    run = uvloop.run(run_client(name, serve.url, args.rate, args.seconds))
                    runs.append(run)
                    print(json.dumps(run), flush=True)
        finally:
            serve.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
