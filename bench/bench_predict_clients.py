"""The /predict benchmark's clients: wrk (closed loop) and bench/oloop.c (open loop).

`oloop_binary` compiles bench/oloop.c with `cc -O2` into a cache directory the first time
(one binary per version of the source). `open_loop` runs it on a fixed schedule and puts
its raw arrays into HdrHistograms; `closed_loop` runs Debian's `wrk` with a Lua script that
posts one body read from a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from harness.serve_process import pin

SOURCE = Path(__file__).with_name("oloop.c")
CLIENT_CORE = 1
MSGPACK = "application/msgpack"
JSON = "application/json"
PERCENTILES = (50.0, 99.0, 99.9)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rampart-bench"


def oloop_binary() -> Path:
    """bench/oloop.c compiled with `cc -O2`, cached by the source's hash."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    exe = cache_dir() / f"oloop-{digest}"
    if exe.is_file():
        return exe
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build bench/oloop.c")
    exe.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=exe.parent, prefix="oloop-", delete=False) as tmp:
        pass
    try:
        subprocess.run([cc, "-O2", "-Wall", "-o", tmp.name, str(SOURCE)], check=True)
        os.replace(tmp.name, exe)  # atomic: two benchmarks compiling at once both win
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return exe


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """oloop's body file: each body as a 4-byte little-endian length and its bytes."""
    with path.open("wb") as f:
        for body in bodies:
            f.write(struct.pack("<I", len(body)) + body)
    return path


def histogram(values_us: np.ndarray) -> HdrHistogram:
    h = HdrHistogram(1, 60_000_000, 3)
    for v, n in zip(*np.unique(np.maximum(values_us, 1), return_counts=True), strict=True):
        h.record_value(int(v), int(n))
    return h


def percentiles_ms(h: HdrHistogram) -> dict[str, float]:
    out = {f"p{p:g}_ms": h.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    return out | {"max_ms": h.get_max_value() / 1000}


@dataclass
class OpenLoop:
    """One open-loop run: oloop's summary and, per scheduled request, latency and jitter (µs,
    -1 where never answered / never sent)."""

    summary: dict[str, Any]
    latency_us: np.ndarray
    jitter_us: np.ndarray

    def due_ns(self) -> np.ndarray:
        """Each request's intended send time (CLOCK_MONOTONIC ns, as time.perf_counter_ns)."""
        step = 1e9 / self.summary["rate"]
        return self.summary["t0_monotonic_ns"] + (np.arange(len(self.latency_us)) * step)

    def report(self) -> dict[str, Any]:
        answered = self.latency_us[self.latency_us >= 0]
        sent = self.jitter_us[self.jitter_us >= 0]
        lat = percentiles_ms(histogram(answered))
        jit = percentiles_ms(histogram(sent))
        s = self.summary
        return {
            **lat,
            "jitter": jit,
            "rate": s["rate"],
            "scheduled": s["scheduled"],
            "answered": s["answered"],
            "non_2xx": s["non_2xx"],
            "socket_errors": s["socket_errors"],
            "waited_for_connection": s["waited_for_connection"],
            "kept_up": s["answered"] == s["scheduled"] and s["non_2xx"] == 0,
            # The client's own CPU per request (user + system): one core sustains ~1/this.
            "client_cpu_us_per_request": (s["cpu_user_s"] + s["cpu_sys_s"])
            * 1e6
            / max(s["sent"], 1),
        }


def open_loop(
    port: int,
    bodies: Path,
    rate: float,
    seconds: float,
    *,
    content_type: str = MSGPACK,
    connections: int = 32,
    core: int | None = CLIENT_CORE,
    path: str = "/predict",
) -> OpenLoop:
    """oloop against 127.0.0.1:port, on `core`, at `rate` requests per second."""
    with tempfile.TemporaryDirectory(prefix="oloop-") as tmp:
        prefix = Path(tmp) / "run"
        cmd = [
            *(pin(core) if core is not None else []),
            str(oloop_binary()),
            "-p",
            str(port),
            "-u",
            path,
            "-r",
            str(rate),
            "-d",
            str(seconds),
            "-c",
            str(connections),
            "-t",
            content_type,
            "-b",
            str(bodies),
            "-o",
            str(prefix),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        lat = np.fromfile(f"{prefix}.lat", dtype="<i8")
        jit = np.fromfile(f"{prefix}.jit", dtype="<i8")
    return OpenLoop(summary, lat, jit)


# wrk's end of run: the result as one JSON line (`WRK-RESULT {...}`) for `closed_loop` to read.
WRK_DONE_LUA = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


WRK_LUA = """-- one body from a file, posted again and again; the result as one JSON line
local f = assert(io.open("BODY_PATH", "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "CONTENT_TYPE"

"""


def wrk_script(path: Path, body: bytes, content_type: str) -> Path:
    body_path = path.with_suffix(".body")
    body_path.write_bytes(body)
    text = WRK_LUA.replace("BODY_PATH", str(body_path)).replace("CONTENT_TYPE", content_type)
    text += WRK_DONE_LUA
    path.write_text(text)
    return path


def wrk_command(url: str, script: Path, seconds: float, connections: int, core: int) -> list[str]:
    """wrk with one thread and `connections` keep-alive connections, pinned to `core`,
    running `script` against `url` (append `--` and the script's arguments)."""
    return [
        *pin(core),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]


def closed_loop(
    port: int, script: Path, seconds: float, connections: int = 16, core: int = CLIENT_CORE
) -> dict[str, Any]:
    """wrk, one thread, `connections` keep-alive connections, on `core`: requests per second."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    cmd = wrk_command(f"http://127.0.0.1:{port}/predict", script, seconds, connections, core)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK-RESULT "))
    r = json.loads(line.removeprefix("WRK-RESULT "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return dict(r)


def main(argv: list[str] | None = None) -> int:
    """The open-loop client is not the bottleneck: against the bare server on core 0, from
    core 1, oloop at each rate (sent on schedule? its send jitter) next to wrk's latency floor
    (one connection: nothing queues; and 16)."""
    import argparse
    import statistics

    from bench import bench_predict_servers as servers

    parser = argparse.ArgumentParser(description="bench/oloop.c against the bare server")
    parser.add_argument("--rates", default="15000,30000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    bare = servers.Bare()
    report: dict[str, Any] = {"wrk": {}, "oloop": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="oloop-check-") as tmp:
            bodies = servers.bodies(servers.n_features(), 1, False)
            script = wrk_script(Path(tmp) / "one.lua", bodies[0], MSGPACK)
            body_file = write_bodies(Path(tmp) / "bodies.bin", bodies)
            closed_loop(bare.port, script, 3)  # warm
            for conns in (1, 16):
                runs = [
                    closed_loop(bare.port, script, args.seconds, conns) for _ in range(args.runs)
                ]
                report["wrk"][f"c{conns}"] = runs
                p99 = statistics.median(r["p99_us"] for r in runs) / 1000
                rps = statistics.median(r["rps"] for r in runs)
                print(f"wrk -c{conns}: {rps:.0f} req/s, p99 {p99:.3f} ms", flush=True)
            for rate in (float(r) for r in args.rates.split(",")):
                runs = [
                    open_loop(bare.port, body_file, rate, args.seconds, connections=64).report()
                    for _ in range(args.runs)
                ]
                report["oloop"][f"{rate:g}"] = runs
                for r in runs:
                    print(f"oloop {rate:g}/s: {json.dumps(r)}", flush=True)
    finally:
        bare.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_client.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
