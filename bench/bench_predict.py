"""Benchmark: rampart's /predict against a bare ASGI baseline, same model and payload.

Both servers run one uvicorn worker (uvloop, httptools) pinned to core 0; the
load generator runs in this process pinned to core 1. The contenders alternate
round by round so drift on this shared machine hits both alike; medians and
ratios are reported.

1. Closed loop (max throughput): requests per second, each contender, N rounds.
2. Open loop at a fixed rate, half of rampart's median max throughput: latency
   from the intended send time (no coordinated omission), p50/p99/p99.9.

    python -m bench.bench_predict [--rounds 3] [--seconds 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np

from bench import loadgen
from harness.scenario_models import model_path

SERVER_CORE = "0"
LOADGEN_CORE = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def _bodies(n_features: int, candidates: int, count: int = 512) -> list[bytes]:
    rng = np.random.default_rng(5)
    return [
        msgpack.packb(
            {
                "request_id": f"bench-{i}",
                "features": rng.normal(size=(candidates, n_features)).astype(np.float32).tolist(),
                "segment": {"publisher_category": "news", "device_type": "mobile"},
            }
        )
        for i in range(count)
    ]


def _run(port: int, bodies: list[bytes], rate: float | None, seconds: float) -> loadgen.LoadResult:
    return asyncio.run(
        loadgen.run_load(
            "127.0.0.1",
            port,
            "/predict",
            bodies,
            "application/msgpack",
            rate=rate,
            duration_s=seconds,
            connections=16 if rate is None else 32,
            warmup_s=1.0,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rampart /predict vs a bare ASGI baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {LOADGEN_CORE})

    model = model_path("champion")
    tmp = Path(tempfile.mkdtemp(prefix="rampart-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        from router.registry import Registry

        registry = Registry(tmp / "state")
        n_features = len(registry.register(model).features)
        registry.close()
        ports = {"rampart": _free_port(), "bare": _free_port()}
        cmds = {
            "rampart": [
                sys.executable,
                "-m",
                "rampart.cli",
                "serve",
                "--state-dir",
                str(tmp / "state"),
                "--port",
                str(ports["rampart"]),
                "--workers",
                "1",
            ],
            "bare": [
                sys.executable,
                "-m",
                "bench.bare_server",
                "--model",
                str(model),
                "--port",
                str(ports["bare"]),
            ],
        }
        for name, cmd in cmds.items():
            proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *cmd], start_new_session=True)
            procs.append(proc)
            _wait(f"http://127.0.0.1:{ports[name]}/", proc)
        bodies = _bodies(n_features, args.candidates)
        order = ["rampart", "bare"]
        for name in order:  # warm both (numba, onnxruntime, caches)
            _run(ports[name], bodies, None, 2.0)

        throughput: dict[str, list[float]] = {n: [] for n in order}
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                result = _run(ports[name], bodies, None, args.seconds)
                throughput[name].append(result.summary["rate_achieved"])
        max_rps = {n: statistics.median(v) for n, v in throughput.items()}
        rate = round(max_rps["rampart"] / 2)

        fixed: dict[str, list[dict[str, Any]]] = {n: [] for n in order}
        curves = []
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                result = _run(ports[name], bodies, rate, args.seconds)
                fixed[name].append(result.summary)
                if r == args.rounds - 1:
                    result.summary["label"] = f"{name} @ {rate} req/s"
                    (out / f"predict-{name}.hgrm").write_text(result.hgrm())
                    curves.append(result.curve())
        with contextlib.suppress(ImportError):  # plotting needs matplotlib
            loadgen.plot_curves(
                curves, out / "predict-latency.png", f"/predict latency at {rate} req/s (open loop)"
            )

        def med(name: str, key: str) -> float:
            return float(statistics.median(s[key] for s in fixed[name]))

        report = {
            "candidates_per_request": args.candidates,
            "rounds": args.rounds,
            "seconds_per_round": args.seconds,
            "max_throughput_rps": max_rps,
            "throughput_ratio": max_rps["rampart"] / max_rps["bare"],
            "fixed_rate_rps": rate,
            "fixed_rate": {
                n: {k: med(n, k) for k in ("p50_ms", "p99_ms", "p99.9_ms", "max_ms")}
                | {"kept_up": all(s["kept_up"] for s in fixed[n])}
                for n in order
            },
        }
        report["p99_ratio"] = report["fixed_rate"]["rampart"]["p99_ms"] / max(
            report["fixed_rate"]["bare"]["p99_ms"], 1e-9
        )
        (out / "predict.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
