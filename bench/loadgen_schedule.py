"""When the load generator sends: the open-loop schedule, the closed loop, and `run_load`.

Open loop (`rate` given): request i has an intended send time t0 + offset_i (constant rate, or
Poisson with a seed). Its latency runs from that *intended* time to the last byte of the
response, so when every connection is busy the request waits in a backlog and the wait counts:
a server stall shows up in every request scheduled during it (no coordinated omission). If the
generator itself falls behind its schedule, it says so (`generator_lag_ms`, `kept_up`) instead
of quietly sending less.

Closed loop (`rate=None`): each connection sends its next request as soon as the previous one is
answered — a capacity measurement; latency runs from the actual send.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import time
from collections.abc import Sequence

from bench.loadgen_http import Connection, Run, build_requests, connect
from bench.loadgen_report import LoadResult, summarise
from harness.target import check_loopback

# uvloop's timers tick in whole milliseconds, so a sleep lands up to 1 ms late: the dispatcher
# sleeps until this close to the next send and then spins on `sleep(0)`, which still polls I/O.
_SPIN_NS = 1_500_000


async def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    rate: float | None,
    duration_s: float | None = 10.0,
    count: int | None = None,
    connections: int = 16,
    warmup_s: float = 1.0,
    poisson: bool = False,
    seed: int = 0,
    method: str = "POST",
    drain_timeout_s: float = 5.0,
    max_lag_ms: float = 1.0,
    label: str | None = None,
) -> LoadResult:
    """Load `http://host:port/path` and measure it.

    `rate` requests/s on an open-loop schedule, or `None` for closed loop (max throughput).
    The run stops issuing at `duration_s` or after `count` requests (warmup included),
    whichever comes first, then waits up to `drain_timeout_s` for answers; requests still
    unanswered then are counted as `unfinished`. Requests that start (are intended, in open
    loop) before `warmup_s` are not measured. Every HTTP response, whatever its status, is in
    the latency histogram; non-2xx statuses are also counted as errors.
    """
    check_loopback(host)
    if not bodies:
        raise ValueError("no request bodies (pass [b''] for requests without a body)")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if duration_s is None and count is None:
        raise ValueError("bound the run: give duration_s, count or both")
    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    requests = build_requests(host, port, path, bodies, content_type, method)
    limit = count if count is not None else sys.maxsize
    run = Run(requests, closed_loop=rate is None, limit=limit)
    conns: list[Connection] = []
    try:
        for _ in range(connections):
            conns.append(await connect(run, host, port))
    except OSError:
        for conn in conns:
            conn.drop()
        raise

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection mid-run is a generator pause, not server latency
    try:
        # The open-loop schedule starts 1 ms out so its first sends are not already late.
        run.t0_ns = time.perf_counter_ns() + (0 if rate is None else 1_000_000)
        run.warmup_end_ns = run.t0_ns + int(warmup_s * 1e9)
        run.end_ns = run.t0_ns + int(duration_s * 1e9) if duration_s is not None else sys.maxsize
        if rate is None:
            await _drive_closed(run, conns)
        else:
            run.idle.extend(conns)
            await _dispatch_open(run, rate, poisson, seed)
        unfinished = await _drain(run, drain_timeout_s)
    finally:
        run.stopping = True
        for conn in list(run.connections):
            conn.drop()
        for task in list(run.reconnects):
            task.cancel()
        if gc_was_enabled:
            gc.enable()
    if run.fatal is not None:
        raise run.fatal
    config = {
        "mode": "closed" if rate is None else "open",
        "url": f"http://{host}:{port}{path}",
        "label": label,
        "rate_asked": rate,
        "poisson": poisson if rate is not None else None,
        "seed": seed if poisson and rate is not None else None,
        "connections": connections,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "count": count,
        "latency_from": "sent" if rate is None else "intended",
        "max_lag_ms": max_lag_ms,
    }
    return summarise(run, config, unfinished)


async def _dispatch_open(run: Run, rate: float, poisson: bool, seed: int) -> None:
    clock = time.perf_counter_ns
    sleep = asyncio.sleep
    rng = random.Random(seed)
    period_ns = 1e9 / rate
    requests, n = run.requests, len(run.requests)
    idle, backlog, lags = run.idle, run.backlog, run.lags
    t0, warm, end, limit = run.t0_ns, run.warmup_end_ns, run.end_ns, run.limit
    i = 0
    offset = 0.0
    due = t0
    while due < end and i < limit and not run.stopping:
        now = clock()
        if due > now:
            wait = due - now
            await sleep((wait - _SPIN_NS) / 1e9 if wait > _SPIN_NS else 0)
            continue
        # Everything already due goes out now; how late the dispatcher got to it is its lag.
        while due <= now and due < end and i < limit:
            if due >= warm:
                lags.append(now - due)
            request = requests[i % n]
            if idle:
                idle.pop().send(request, due)
            else:
                backlog.append((due, request))
                if len(backlog) > run.max_backlog:
                    run.max_backlog = len(backlog)
            i += 1
            offset = offset + rng.expovariate(1.0) * period_ns if poisson else i * period_ns
            due = t0 + int(offset)
    run.issued = i


async def _drive_closed(run: Run, conns: list[Connection]) -> None:
    for conn in conns:
        conn.ready()
    while not run.stopping and run.issued < run.limit:
        remaining = run.end_ns - time.perf_counter_ns()
        if remaining <= 0:
            break
        await asyncio.sleep(min(remaining / 1e9, 0.005))


async def _drain(run: Run, timeout_s: float) -> int:
    """Wait for outstanding answers; return how many measured requests never got one."""
    if run.closed_loop:
        run.end_ns = 0  # connections stop taking work
    deadline = time.perf_counter_ns() + int(timeout_s * 1e9)
    while (run.inflight or run.backlog) and not run.stopping:
        if time.perf_counter_ns() >= deadline:
            break
        await asyncio.sleep(0.001)
    run.stopping = True
    warm = run.warmup_end_ns
    waiting = sum(1 for start, _ in run.backlog if start >= warm)
    return waiting + sum(1 for c in run.connections if c.start_ns >= warm)
