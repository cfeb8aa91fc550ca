"""Benchmark: the memory footprint of `rampart serve --workers 1`, process by process.

A sidecar runs beside every ad-server pod, so its resident memory is paid once per pod.
Memory is counted as PSS (proportional set size, /proc/PID/smaps_rollup): a page shared by
k processes counts 1/k in each, so the processes' PSS add up to what the tree costs the
machine. A library page that processes outside the tree map too (libpython, libc) is split
with them as well, so PSS moves with what else runs on the machine (a bare server measured
41 and 55 MB an hour apart here); private memory (USS) does not, and is reported beside it.
For each round a fresh `rampart serve` (champion and candidate registered) is measured

1. idle: a rollout in phase 1 (both models loaded in the worker), every path the load
   takes run once, then quiet for longer than the processes' periodic release of the
   compiler's pages (router.residency) and the evaluator's lease on /status;
2. under load: open-loop /predict at a modest rate (bench.loadgen) and a /status reader
   once a second (the dashboard), sampled each second: the last sample and the peak.

and, for reference, a bare raw-ASGI + onnxruntime server (bench.bare_server) idle and
under the same load. Medians over rounds.

    python -m bench.bench_footprint [--rounds 3] [--seconds 20] [--rate 200]
        [--out bench/results/footprint.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np

from bench import loadgen
from bench.bench_predict_servers import process_tree
from harness.scenario_models import model_path
from harness.serve_process import ADMIN_TOKEN, free_port


def _bodies(n_features: int, count: int = 512) -> list[bytes]:
    """`count` one-row msgpack /predict bodies, each its own request id (the load's
    requests split between the arms as the hash says)."""
    rng = np.random.default_rng(5)
    return [
        msgpack.packb(
            {
                "request_id": f"footprint-{i}",
                "features": rng.normal(size=(1, n_features)).astype(np.float32).tolist(),
                "segment": {"publisher_category": "news", "device_type": "mobile"},
            }
        )
        for i in range(count)
    ]


READY_S = 300.0  # the evaluator's first start on a machine compiles the numba kernels
# Quiet long enough for the processes' periodic release of the compiler's pages
# (router.residency.EVERY_S) and the evaluator's lease on /status (router.status.LEASE_S).
SETTLE_S = 35.0


def pss_kb(pid: int) -> dict[str, int]:
    """PSS, RSS and private memory (kB) of one process, from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss", "Private_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0])
    return {
        "pss_kb": out["Pss"],
        "rss_kb": out["Rss"],
        "private_kb": out["Private_Clean"] + out["Private_Dirty"],
    }


def role(pid: int, root: int, evaluator_pid: int | None) -> str:
    if pid == root:
        return "serve"  # with --workers 1, uvicorn serves in this process: the worker
    if pid == evaluator_pid:
        return "evaluator"
    if evaluator_pid is not None and pid == parent_of(evaluator_pid):
        return "zygote"  # forks the evaluators (rampart.zygote)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return "other"


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def measure_tree(root: int, evaluator_pid: int | None = None) -> dict[str, Any]:
    """PSS per process of the tree under `root` (by role) and the total, in MB."""
    processes: list[dict[str, Any]] = []
    for pid in process_tree(root):
        try:
            mem = pss_kb(pid)
        except (OSError, KeyError):  # exited meanwhile, or a kernel thread
            continue
        processes.append({"pid": pid, "role": role(pid, root, evaluator_pid), **mem})
    return {
        "processes": processes,
        "total_pss_mb": round(sum(p["pss_kb"] for p in processes) / 1024, 1),
        # Private memory (USS) does not move with what other processes on the machine map.
        "total_private_mb": round(sum(p["private_kb"] for p in processes) / 1024, 1),
        "by_role_pss_mb": {
            r: round(sum(p["pss_kb"] for p in processes if p["role"] == r) / 1024, 1)
            for r in sorted({p["role"] for p in processes})
        },
    }


def _wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the server exited with {proc.returncode}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what}: not reached in {READY_S:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _under_load(
    port: int, bodies: list[bytes], rate: float, seconds: float, sample: Callable[[], float]
) -> tuple[float, dict[str, Any]]:
    """Run the load on a thread; sample once a second meanwhile. The peak sample's total
    and the load's summary."""
    result: dict[str, Any] = {}

    def load() -> None:
        r = asyncio.run(
            loadgen.run_load(
                "127.0.0.1",
                port,
                "/predict",
                bodies,
                "application/msgpack",
                rate=rate,
                duration_s=seconds,
                connections=8,
                warmup_s=1.0,
            )
        )
        result["summary"] = r.summary

    thread = threading.Thread(target=load, name="footprint-load")
    thread.start()
    peak = 0.0
    while thread.is_alive():
        thread.join(1.0)
        if thread.is_alive():
            peak = max(peak, sample())
    return peak, result.get("summary", {})


def rampart_round(tmp: Path, rate: float, seconds: float) -> dict[str, Any]:
    from router.registry import Registry

    state = tmp / "state"
    registry = Registry(state)
    n_features = len(registry.register(model_path("champion")).features)
    candidate = registry.register(model_path("challenger_better")).version
    registry.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rampart.cli", "serve", "--state-dir", str(state)]
    cmd += ["--port", str(port), "--workers", "1"]
    env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        evaluator: dict[str, int] = {}

        def ticking() -> bool:
            s = httpx.get(f"{url}/status", timeout=5).json()
            if s.get("evaluator") and not s.get("stale"):
                evaluator["pid"] = int(s["evaluator"]["pid"])
                return True
            return False

        _wait("rampart serve ready", ticking, proc)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.post(
            f"{url}/admin/rollout/start", json={"version": str(candidate)}, headers=headers
        )
        r.raise_for_status()
        _wait(
            "the rollout's split in force",
            lambda: httpx.get(f"{url}/status", timeout=5).json().get("state") == "running",
            proc,
        )
        bodies = _bodies(n_features)
        # Warm: every path the load takes has run once (kernels loaded), then the
        # processes have had their periodic release of the compiler's pages, and nobody
        # has read /status for longer than the evaluator's lease on it.
        _under_load(port, bodies, rate, 2.0, lambda: 0.0)
        httpx.get(f"{url}/metrics", timeout=5)
        time.sleep(SETTLE_S)
        idle = measure_tree(proc.pid, evaluator["pid"])
        samples: list[dict[str, Any]] = []

        def sample() -> float:
            httpx.get(f"{url}/status", timeout=5)  # the dashboard, once a second
            samples.append(measure_tree(proc.pid, evaluator["pid"]))
            return float(samples[-1]["total_pss_mb"])

        peak, summary = _under_load(port, bodies, rate, seconds, sample)
        return {
            "idle": idle,
            "load": samples[-1] if samples else {},
            "load_peak_mb": peak,
            "load_summary": summary,
        }
    finally:
        _stop(proc)


def bare_round(rate: float, seconds: float) -> dict[str, Any]:
    model = model_path("champion")
    port = free_port()
    cmd = [sys.executable, "-m", "bench.bare_server", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        _wait(
            "bare server up",
            lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2) is not None,
            proc,
        )
        from router.models import Model

        bodies = _bodies(len(Model(model, 1).features))
        _under_load(port, bodies, rate, 2.0, lambda: 0.0)  # warm, as rampart is
        idle = measure_tree(proc.pid)
        samples: list[dict[str, Any]] = []

        def sample() -> float:
            samples.append(measure_tree(proc.pid))
            return float(samples[-1]["total_pss_mb"])

        peak, summary = _under_load(port, bodies, rate, seconds, sample)
        return {"idle": idle, "load_peak_mb": peak, "load_summary": summary}
    finally:
        _stop(proc)


def _median_by_role(rounds: list[dict[str, Any]], phase: str) -> dict[str, float]:
    roles = {r for x in rounds for r in x[phase]["by_role_pss_mb"]}
    return {
        r: round(statistics.median(x[phase]["by_role_pss_mb"].get(r, 0.0) for x in rounds), 1)
        for r in sorted(roles)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load (20)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (200)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-server reference")
    parser.add_argument("--out", default="bench/results/footprint.json")
    args = parser.parse_args(argv)

    rounds, bare = [], []
    for _ in range(args.rounds):
        tmp = Path(tempfile.mkdtemp(prefix="rampart-footprint-"))
        try:
            rounds.append(rampart_round(tmp, args.rate, args.seconds))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not args.no_bare:
            bare.append(bare_round(args.rate, args.seconds))
    report: dict[str, Any] = {
        "rounds": args.rounds,
        "rate_rps": args.rate,
        "load_seconds": args.seconds,
        "idle_total_pss_mb": statistics.median(r["idle"]["total_pss_mb"] for r in rounds),
        "idle_by_role_pss_mb": _median_by_role(rounds, "idle"),
        "idle_total_private_mb": statistics.median(r["idle"]["total_private_mb"] for r in rounds),
        "load_total_pss_mb": statistics.median(r["load"]["total_pss_mb"] for r in rounds),
        "load_by_role_pss_mb": _median_by_role(rounds, "load"),
        "load_peak_pss_mb": statistics.median(r["load_peak_mb"] for r in rounds),
        "runs": rounds,
    }
    if bare:
        report["bare_idle_pss_mb"] = statistics.median(b["idle"]["total_pss_mb"] for b in bare)
        report["bare_load_peak_pss_mb"] = statistics.median(b["load_peak_mb"] for b in bare)
        report["bare_runs"] = bare
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary_text(report))
    return 0


def summary_text(report: dict[str, Any]) -> str:
    def roles(by: dict[str, float]) -> str:
        return ", ".join(f"{r} {v:g}" for r, v in by.items())

    lines = [
        f"rampart serve --workers 1, PSS (MB, median of {report['rounds']} rounds): "
        f"idle {report['idle_total_pss_mb']:g} ({roles(report['idle_by_role_pss_mb'])}; "
        f"private {report['idle_total_private_mb']:g}); "
        f"under load ({report['rate_rps']:g} req/s, {report['load_seconds']:g} s, a rollout "
        f"in phase 1, /status read each second) {report['load_total_pss_mb']:g} "
        f"({roles(report['load_by_role_pss_mb'])}), peak {report['load_peak_pss_mb']:g}"
    ]
    if "bare_idle_pss_mb" in report:
        lines.append(
            f"bare raw-ASGI + onnxruntime server: idle {report['bare_idle_pss_mb']:g} MB, "
            f"under the same load {report['bare_load_peak_pss_mb']:g} MB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
