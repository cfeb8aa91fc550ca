"""Open-loop HTTP/1.1 load generator, in the spirit of wrk2, for loopback targets only.

Open loop (`rate` given): request i has an intended send time t0 + offset_i (constant rate, or
Poisson with a seed). Its latency runs from that *intended* time to the last byte of the
response, so when every connection is busy the request waits in a backlog and the wait counts:
a server stall shows up in every request scheduled during it (no coordinated omission). If the
generator itself falls behind its schedule, it says so (`generator_lag_ms`, `kept_up`) instead
of quietly sending less.

Closed loop (`rate=None`): each connection sends its next request as soon as the previous one is
answered — a capacity measurement; latency runs from the actual send.

Connections are raw `asyncio.Protocol`s on uvloop, keep-alive, one request outstanding each.
Requests are pre-encoded. Latencies are kept as raw integers during the run and put into an
`HdrHistogram(1, 60_000_000, 3)` (microseconds) afterwards, off the hot path.

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --rate 2000 --duration 10 \\
        --body-file req.msgpack --json out.json --hgrm out.hgrm --plot out.png

Errors:

    LoadgenError
     └── ProtocolError      the server answered something this client does not parse
    TargetNotAllowed        (a ValueError, from harness.target) the URL is not on loopback
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import random
import re
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from hdrh.histogram import HdrHistogram

from harness.target import TargetNotAllowed as TargetNotAllowed
from harness.target import check_loopback, error_kind
from harness.target import parse_url as parse_url

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p99.9_ms": 99.9}

# uvloop's timers tick in whole milliseconds, so a sleep lands up to 1 ms late: the dispatcher
# sleeps until this close to the next send and then spins on `sleep(0)`, which still polls I/O.
_SPIN_NS = 1_500_000
_RECONNECT_DELAY_S = 0.01


class LoadgenError(Exception):
    pass


class ProtocolError(LoadgenError):
    pass


def build_requests(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    content_type: str,
    method: str = "POST",
) -> list[bytes]:
    """Complete HTTP/1.1 requests (head + body), one per body."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
    return [b"%sContent-Length: %d\r\n\r\n%s" % (head.encode(), len(b), b) for b in bodies]


class _Run:
    """State shared by the dispatcher and the connections of one run."""

    def __init__(self, requests: list[bytes], closed_loop: bool, limit: int) -> None:
        self.requests = requests
        self.closed_loop = closed_loop
        self.limit = limit
        self.t0_ns = 0
        self.warmup_end_ns = 0
        self.end_ns = 0
        self.issued = 0
        self.inflight = 0
        self.stopping = False
        self.fatal: ProtocolError | None = None
        self.idle: list[_Connection] = []
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.max_backlog = 0
        self.connections: set[_Connection] = set()
        # One row per answered request: start (intended or sent), last byte, HTTP status.
        self.starts = array("q")
        self.dones = array("q")
        self.statuses = array("H")
        self.lags = array("q")  # dispatcher lateness, measured requests only
        self.conn_errors: dict[str, int] = {}
        self.lost = 0  # measured requests whose connection failed under them
        self.reconnects: set[asyncio.Task[None]] = set()

    def next_request(self) -> bytes:
        request = self.requests[self.issued % len(self.requests)]
        self.issued += 1
        return request

    def count_error(self, kind: str, start_ns: int) -> None:
        if start_ns >= self.warmup_end_ns:
            self.conn_errors[kind] = self.conn_errors.get(kind, 0) + 1

    def fail(self, error: ProtocolError) -> None:
        if self.fatal is None:
            self.fatal = error
        self.stopping = True


class _Connection(asyncio.Protocol):
    __slots__ = (
        "buf", "close_after", "host", "need", "port", "run", "start_ns", "status", "transport"
    )  # fmt: skip

    def __init__(self, run: _Run, host: str, port: int) -> None:
        self.run = run
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # bytes of the whole response, once its head is parsed
        self.status = 0
        self.close_after = False
        self.start_ns = -1  # start of the request in flight, -1 when idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.run.connections.add(self)

    def ready(self) -> None:
        """Take work: the backlog (open loop), the next request (closed loop) or go idle."""
        run = self.run
        if run.stopping:
            return
        if run.closed_loop:
            now = time.perf_counter_ns()
            if now < run.end_ns and run.issued < run.limit:
                self.send(run.next_request(), now)
        elif run.backlog:
            start_ns, request = run.backlog.popleft()
            self.send(request, start_ns)
        else:
            run.idle.append(self)

    def send(self, request: bytes, start_ns: int) -> None:
        self.start_ns = start_ns
        self.run.inflight += 1
        try:  # noqa: SIM105 (contextlib.suppress costs more on this path)
            self.transport.write(request)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # closed under us (peer's FIN seen): connection_lost counts the request lost

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.parse_head(bytes(buf[:end]), end + 4)
            if self.need < 0:
                return
        if len(buf) < self.need:
            return
        done = time.perf_counter_ns()
        run = self.run
        run.starts.append(self.start_ns)
        run.dones.append(done)
        run.statuses.append(self.status)
        run.inflight -= 1
        self.start_ns = -1
        del buf[: self.need]
        self.need = -1
        if self.close_after:
            self.drop()
        else:
            self.ready()

    def parse_head(self, head: bytes, head_len: int) -> None:
        if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
            self.protocol_error(f"malformed status line {head[:40]!r}")
            return
        status = int(head[9:12])
        if status < 200:
            self.protocol_error(f"interim {status} responses are not supported")
            return
        lower = head.lower()
        if b"\r\ntransfer-encoding:" in lower:
            self.protocol_error("chunked (Transfer-Encoding) responses are not supported")
            return
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i + 17)
            length = int(lower[i + 17 : j if j >= 0 else len(lower)])
        elif status in (204, 304):
            length = 0
        else:
            self.protocol_error(f"{status} response without Content-Length")
            return
        self.status = status
        self.need = head_len + length
        self.close_after = b"\r\nconnection: close" in lower

    def protocol_error(self, what: str) -> None:
        self.run.fail(ProtocolError(f"{self.host}:{self.port}: {what}; bench.loadgen stops"))
        self.drop()

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.connections.discard(self)
        if self in run.idle:
            run.idle.remove(self)
        if self.start_ns >= 0:
            run.inflight -= 1
            if not run.stopping and self.start_ns >= run.warmup_end_ns:
                run.lost += 1
                run.count_error(error_kind(exc) if exc else "closed", self.start_ns)
            self.start_ns = -1
        if not run.stopping:
            task = asyncio.get_running_loop().create_task(_reconnect(run, self.host, self.port))
            run.reconnects.add(task)
            task.add_done_callback(run.reconnects.discard)


async def _connect(run: _Run, host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Connection(run, host, port), host, port)
    return conn


async def _reconnect(run: _Run, host: str, port: int) -> None:
    while not run.stopping:
        try:
            conn = await _connect(run, host, port)
        except OSError as exc:
            run.count_error("connect_" + error_kind(exc), time.perf_counter_ns())
            await asyncio.sleep(_RECONNECT_DELAY_S)
        else:
            conn.ready()
            return


@dataclass
class LoadResult:
    """A finished run: its summary (JSON-ready), its latency histogram and raw samples (µs).

    `latencies_us` holds every measured response's latency, in completion order;
    `lags_us` how late the open-loop dispatcher was for each measured request.
    """

    summary: dict[str, Any]
    histogram: HdrHistogram
    latencies_us: np.ndarray = field(repr=False)
    lags_us: np.ndarray = field(repr=False)

    def hgrm(self) -> str:
        return hgrm_text(self.histogram)

    def curve(self) -> Curve:
        points = self.summary["percentile_distribution"]
        label = self.summary.get("label") or self.summary["url"]
        return Curve(label, [p for p, _ in points], [v for _, v in points])

    def write(self, *, json_path: Path | None = None, hgrm_path: Path | None = None) -> None:
        if json_path is not None:
            json_path.write_text(json.dumps(self.summary, indent=2) + "\n")
        if hgrm_path is not None:
            hgrm_path.write_text(self.hgrm())


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
    run = _Run(requests, closed_loop=rate is None, limit=limit)
    conns: list[_Connection] = []
    try:
        for _ in range(connections):
            conns.append(await _connect(run, host, port))
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
    return _summarise(run, config, unfinished)


async def _dispatch_open(run: _Run, rate: float, poisson: bool, seed: int) -> None:
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


async def _drive_closed(run: _Run, conns: list[_Connection]) -> None:
    for conn in conns:
        conn.ready()
    while not run.stopping and run.issued < run.limit:
        remaining = run.end_ns - time.perf_counter_ns()
        if remaining <= 0:
            break
        await asyncio.sleep(min(remaining / 1e9, 0.005))


async def _drain(run: _Run, timeout_s: float) -> int:
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


def _summarise(run: _Run, config: dict[str, Any], unfinished: int) -> LoadResult:
    starts = np.frombuffer(run.starts, dtype=np.int64)
    dones = np.frombuffer(run.dones, dtype=np.int64)
    statuses = np.frombuffer(run.statuses, dtype=np.uint16)
    measured = starts >= run.warmup_end_ns
    latencies_us = np.clip((dones[measured] - starts[measured]) // 1000, LOWEST_US, HIGHEST_US)
    histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    values, counts = np.unique(latencies_us, return_counts=True)
    for value, n in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, n)

    codes, code_counts = np.unique(statuses[measured], return_counts=True)
    by_status = {str(c): int(n) for c, n in zip(codes, code_counts, strict=True) if c >= 300}
    responses = int(measured.sum())
    errors_total = sum(by_status.values()) + sum(run.conn_errors.values()) + unfinished
    elapsed_s = (int(dones[measured].max()) - run.warmup_end_ns) / 1e9 if responses else 0.0

    summary: dict[str, Any] = dict(config)
    summary.update(
        requests=responses + run.lost + unfinished,
        responses=responses,
        elapsed_s=round(elapsed_s, 6),
        rate_achieved=round(responses / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        errors={
            "total": errors_total,
            "status": by_status,
            "connection": dict(run.conn_errors),
            "unfinished": unfinished,
        },
    )
    summary.update(_latency_summary(histogram))
    lags_us = np.frombuffer(run.lags, dtype=np.int64) / 1000.0
    if run.closed_loop:
        summary.update(kept_up=None, generator_lag_ms=None, max_backlog=None)
    else:
        lag_p99_ms = float(np.percentile(lags_us, 99)) / 1000 if len(lags_us) else 0.0
        lag_max_ms = float(lags_us.max()) / 1000 if len(lags_us) else 0.0
        summary.update(
            kept_up=lag_p99_ms <= config["max_lag_ms"],
            generator_lag_ms={"p99": round(lag_p99_ms, 3), "max": round(lag_max_ms, 3)},
            max_backlog=run.max_backlog,
        )
    summary["percentile_distribution"] = percentile_curve(histogram)
    return LoadResult(summary, histogram, latencies_us, lags_us)


def _latency_summary(histogram: HdrHistogram) -> dict[str, float | None]:
    names = [*SUMMARY_PERCENTILES, "max_ms", "mean_ms"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(names)
    values = histogram.get_percentile_to_value_dict(list(SUMMARY_PERCENTILES.values()))
    out: dict[str, float | None] = {
        name: values[p] / 1000 for name, p in SUMMARY_PERCENTILES.items()
    }
    out["max_ms"] = histogram.get_max_value() / 1000
    out["mean_ms"] = round(histogram.get_mean_value() / 1000, 3)
    return out


def percentile_curve(histogram: HdrHistogram, ticks: int = 5) -> list[list[float]]:
    """[[percentile (0–100), latency ms], ...] at the .hgrm's points."""
    if histogram.get_total_count() == 0:
        return []
    return [
        [item.percentile_level_iterated_to, item.value_iterated_to / 1000]
        for item in histogram.get_percentile_iterator(ticks)
    ]


def hgrm_text(histogram: HdrHistogram) -> str:
    """The standard .hgrm percentile distribution, values in milliseconds."""
    out = io.BytesIO()
    histogram.output_percentile_distribution(out, 1000.0)
    text = out.getvalue().decode()
    # hdrh scales the mean by the unit ratio but not the standard deviation.
    stddev_ms = histogram.get_stddev() / 1000 if histogram.get_total_count() else 0.0
    return re.sub(
        r"StdDeviation   = +[0-9.]+\]", f"StdDeviation   = {stddev_ms:12.3f}]", text, count=1
    )


# ---------------------------------------------------------------- reading and plotting runs


@dataclass(frozen=True)
class Curve:
    label: str
    percentiles: list[float]  # 0–100
    values_ms: list[float]


def read_curve(path: Path) -> Curve:
    """A run's latency-by-percentile curve from its .hgrm or .json output."""
    if path.suffix == ".json":
        summary = json.loads(path.read_text())
        points = summary.get("percentile_distribution")
        if points is None:
            raise ValueError(f"{path}: no percentile_distribution (not a bench.loadgen summary)")
        label = summary.get("label") or path.stem
        return Curve(label, [p for p, _ in points], [v for _, v in points])
    percentiles, values = [], []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) in (3, 4) and not line.startswith("#"):
            try:
                value, fraction = float(fields[0]), float(fields[1])
            except ValueError:
                continue  # the column header
            values.append(value)
            percentiles.append(fraction * 100)
    if not values:
        raise ValueError(f"{path}: no percentile lines (not an .hgrm file)")
    return Curve(path.stem, percentiles, values)


def plot_curves(curves: Sequence[Curve], out: Path, title: str = "Latency by percentile") -> None:
    """Overlay curves on HdrHistogram's axis: x = 1/(1-p), log scale, labelled in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    top = 10.0
    for curve in curves:
        points = [
            (100 / (100 - p), v)
            for p, v in zip(curve.percentiles, curve.values_ms, strict=True)
            if p < 100
        ]
        if points:
            top = max(top, max(x for x, _ in points))
            ax.plot([x for x, _ in points], [v for _, v in points], label=curve.label)
    ax.set_xscale("log")
    ticks = [1.0, 2.0] + [10.0**k for k in range(1, 7) if 10.0 ** (k - 1) < top]
    labels = {1.0: "0%", 2.0: "50%"}
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels.get(t) or f"{100 - 100 / t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(1, ticks[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------- CLI

_CONTENT_TYPES = {
    ".msgpack": "application/msgpack",
    ".mp": "application/msgpack",
    ".json": "application/json",
    ".jsonl": "application/json",
    ".ndjson": "application/json",
}


def read_bodies(path: Path) -> list[bytes]:
    """Bodies from a file: concatenated msgpack objects, one per line (.jsonl), else whole."""
    data = path.read_bytes()
    if path.suffix in (".msgpack", ".mp"):
        import msgpack

        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        bodies, at = [], 0
        for _ in unpacker:
            bodies.append(data[at : unpacker.tell()])
            at = unpacker.tell()
        return bodies
    if path.suffix in (".jsonl", ".ndjson"):
        return [line for line in data.splitlines() if line.strip()]
    return [data]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Open-loop (wrk2-style) or closed-loop HTTP/1.1 load on a loopback URL.",
    )
    p.add_argument("--url", help="http://127.0.0.1:PORT/PATH (loopback only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    mode.add_argument("--max-throughput", action="store_true", help="closed loop")
    p.add_argument("--duration", type=float, default=10.0, help="seconds, warmup included")
    p.add_argument("--count", type=int, help="stop after N requests (warmup included)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals (open loop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="POST")
    p.add_argument("--body-file", type=Path, nargs="+", action="extend", default=[])
    p.add_argument("--content-type", help="default: from the body files' extension")
    p.add_argument("--drain-timeout", type=float, default=5.0)
    p.add_argument("--max-lag-ms", type=float, default=1.0, help="kept_up if lag p99 <= this")
    p.add_argument("--label", help="this run's name in the plot legend")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--hgrm", type=Path, help="write the percentile distribution here")
    p.add_argument("--plot", type=Path, help="write a latency-by-percentile PNG here")
    p.add_argument("--compare", type=Path, nargs="+", action="extend", default=[],
                   help=".hgrm/.json of other runs to overlay on --plot")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    curves = [read_curve(path) for path in args.compare]
    if args.url is None:
        if not (curves and args.plot):
            parser.error("give --url to run load, or --plot OUT with --compare FILES to plot")
        plot_curves(curves, args.plot)
        return 0
    if args.rate is None and not args.max_throughput:
        parser.error("give --rate R (open loop) or --max-throughput (closed loop)")
    try:
        host, port, path = parse_url(args.url)
    except ValueError as exc:
        print(f"bench.loadgen: {exc}", file=sys.stderr)
        return 2
    bodies = [body for f in args.body_file for body in read_bodies(f)] or [b""]
    content_type = args.content_type
    if content_type is None:
        kinds = {_CONTENT_TYPES.get(f.suffix, "application/octet-stream") for f in args.body_file}
        if len(kinds) > 1:
            parser.error(f"body files of several types {sorted(kinds)}: give --content-type")
        content_type = kinds.pop() if kinds else "application/octet-stream"

    import uvloop

    try:
        result = uvloop.run(
            run_load(
                host, port, path, bodies, content_type,
                rate=None if args.max_throughput else args.rate,
                duration_s=args.duration, count=args.count, connections=args.connections,
                warmup_s=args.warmup, poisson=args.poisson, seed=args.seed,
                method=args.method, drain_timeout_s=args.drain_timeout,
                max_lag_ms=args.max_lag_ms, label=args.label or args.url,
            )
        )  # fmt: skip
    except LoadgenError as exc:
        print(f"bench.loadgen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bench.loadgen: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    result.write(json_path=args.json, hgrm_path=args.hgrm)
    if args.plot:
        plot_curves([result.curve(), *curves], args.plot)
    shown = {k: v for k, v in result.summary.items() if k != "percentile_distribution"}
    print(json.dumps(shown, indent=2))
    if result.summary["kept_up"] is False:
        print("bench.loadgen: WARNING: the generator fell behind its schedule", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
