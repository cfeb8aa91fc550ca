"""Where /predict's tail comes from: the open loop at half load against `rampart serve`
(every process on core 0, the evaluator too), with timing probes in the server's processes
(bench/bench_predict_probe/sitecustomize.py: gc, the worker's ticker pass, the evaluator's
tick) and, in a second run, py-spy sampling the worker and the evaluator.

The client's slow requests (latency above `--slow-ms`, from the intended send time) are
grouped into stall episodes; each episode is matched with the server-side events that
overlap it. Reported: a table of stall sources (how often each runs, how long, how many
episodes and slow requests it overlaps), the worker's collections per request, and
py-spy's hottest frames.

    python -m bench.bench_predict_tail [--rate R] [--seconds 10] [--rollout] [--pyspy]

Run it under `flock /tmp/rampart-bench.lock`. Results: bench/results/predict_tail*.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import bench_predict_clients as clients
from bench import bench_predict_sched as perf_sched
from bench import bench_predict_servers as servers
from harness.serve_process import Serve, pin

PROBE_DIR = Path(__file__).with_name("bench_predict_probe")
SLACK_NS = 200_000  # an event this close before an episode can still be its cause


def episodes(run: clients.OpenLoop, slow_us: int) -> list[dict[str, Any]]:
    """Runs of consecutive slow requests: start (due time of the first), end (answer of the
    last), requests, worst latency."""
    due = run.due_ns()
    lat = run.latency_us
    slow = np.flatnonzero(lat >= slow_us)
    out: list[dict[str, Any]] = []
    for i in slow:
        end = due[i] + lat[i] * 1000
        if out and due[i] <= out[-1]["end"] + SLACK_NS:
            e = out[-1]
            e["end"] = max(e["end"], end)
            e["requests"] += 1
            e["worst_us"] = max(e["worst_us"], int(lat[i]))
        else:
            out.append({"start": due[i], "end": end, "requests": 1, "worst_us": int(lat[i])})
    return out


def load_probes(directory: Path) -> dict[int, list[tuple[str, int, int, int]]]:
    out: dict[int, list[tuple[str, int, int, int]]] = {}
    for f in directory.glob("probe-*.tsv"):
        rows = [line.split("\t") for line in f.read_text().splitlines()]
        pid = int(f.stem.split("-")[1])
        out[pid] = [(k, int(a), int(b), int(x)) for k, a, b, x in rows]
    return out


def attribute(
    run: clients.OpenLoop,
    probes: dict[int, list[tuple[str, int, int, int]]],
    worker: int,
    slow_us: int,
) -> dict[str, Any]:
    """The table of stall sources for one run."""
    t0 = run.summary["t0_monotonic_ns"]
    t1 = t0 + run.summary["seconds"] * 1e9
    eps = episodes(run, slow_us)
    by_source: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)
    for pid, rows in probes.items():
        where = "worker" if pid == worker else "evaluator"
        if pid != worker and not any(r[0] == "eval_tick" for r in rows):
            where = f"process {pid}"
        for kind, a, b, x in rows:
            if t0 <= a <= t1:
                name = kind if kind.startswith(("worker", "eval")) else f"{where} {kind}"
                by_source[name].append((a, b, x))
    table: list[dict[str, Any]] = []
    claimed = [False] * len(eps)
    for name, spans in sorted(by_source.items()):
        starts = np.array([a for a, _, _ in spans])
        ends = np.array([b for _, b, _ in spans])
        durations_us = (ends - starts) / 1000
        hit = 0
        hit_requests = 0
        for j, e in enumerate(eps):
            if ((starts - SLACK_NS <= e["end"]) & (ends + SLACK_NS >= e["start"])).any():
                hit += 1
                hit_requests += e["requests"]
                claimed[j] = True
        row = {
            "source": name,
            "count": len(spans),
            "period_ms": float(np.median(np.diff(starts)) / 1e6) if len(spans) > 1 else None,
            "duration_p50_us": float(np.median(durations_us)),
            "duration_p99_us": float(np.percentile(durations_us, 99)),
            "duration_max_us": float(durations_us.max()),
            "episodes_overlapped": hit,
            "slow_requests_overlapped": hit_requests,
        }
        if name.startswith(("eval", "worker_")):
            row["cpu_p50_us"] = float(np.median([x / 1000 for _, _, x in spans]))
        table.append(row)
    table.sort(key=lambda r: -r["slow_requests_overlapped"])
    unexplained = [e for e, c in zip(eps, claimed, strict=True) if not c]
    gen0 = len(by_source.get("worker gc0", []))
    answered = run.summary["answered"]
    return {
        "slow_ms": slow_us / 1000,
        "slow_requests": int(sum(e["requests"] for e in eps)),
        "episodes": len(eps),
        "episode_worst_ms": sorted((e["worst_us"] / 1000 for e in eps), reverse=True)[:10],
        "sources": table,
        "unexplained_episodes": len(unexplained),
        "unexplained_slow_requests": int(sum(e["requests"] for e in unexplained)),
        "worker_gc0_per_request": gen0 / max(answered, 1),
        "worker_gc_per_second": {
            g: len(by_source.get(f"worker gc{g}", [])) / run.summary["seconds"] for g in (0, 1, 2)
        },
        "client": run.report(),
    }


def sched(pid: int) -> dict[str, int]:
    """The scheduler's account of `pid` (all its threads): CPU time and time spent runnable
    but waiting for the CPU (ns, /proc/PID/schedstat), and its context switches."""
    out = {"cpu_ns": 0, "runqueue_wait_ns": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            cpu, wait, _ = (int(x) for x in (task / "schedstat").read_text().split())
            out["cpu_ns"] += cpu
            out["runqueue_wait_ns"] += wait
    text = Path(f"/proc/{pid}/status").read_text()
    for line in text.splitlines():
        if "ctxt_switches" in line:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def children(pid: int) -> list[int]:
    """Child processes of every thread of `pid` (the evaluator is spawned by a thread)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def flush_probes(pid: int, directory: Path) -> None:
    """Ask the worker for its probe records (SIGUSR1) and wait for them."""
    import signal
    import time

    path = directory / f"probe-{pid}.tsv"
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    size = -1
    while time.monotonic() < deadline:  # written when the size stops changing
        now = path.stat().st_size if path.exists() else -1
        if now > 0 and now == size:
            return
        size = now
        time.sleep(0.3)
    raise RuntimeError(f"worker {pid} wrote no probe records")


def pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid`'s Python stacks on the client's core, collapsed into `out`.
    Non-blocking: it never stops the process (so no native frames, which need stopping)."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    cmd = [exe, "record", "--nonblocking", "-r", "200", "-d", str(round(seconds))]
    return subprocess.Popen(
        [*pin(clients.CLIENT_CORE), *cmd, "-f", "raw", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def hottest(collapsed: Path, top: int = 12) -> list[dict[str, Any]]:
    """The frames (leaf and inclusive) with the most samples, from py-spy's raw output."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        total += int(n)
        leaf[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)
    return [
        {"frame": f, "self": round(n / total, 4), "total": round(inclusive[f] / total, 4)}
        for f, n in leaf.most_common(top)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="attribute rampart /predict's open-loop tail")
    parser.add_argument("--rate", type=float, help="default: half of a wrk closed-loop max")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow-ms", type=float, default=1.0)
    parser.add_argument("--rollout", action="store_true", help="rollout paused in phase 4")
    parser.add_argument("--events-rate", type=float, default=200.0)
    parser.add_argument("--pyspy", action="store_true", help="one more run under py-spy")
    parser.add_argument("--no-perf", dest="perf", action="store_false", help="no perf sched")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    args.perf = args.perf and perf_sched.available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rampart-tail-") as tmp:
        root = Path(tmp)
        probe = root / "probe"
        probe.mkdir()
        env = servers.server_env()
        env["PYTHONPATH"] = os.pathsep.join([str(PROBE_DIR), env.get("PYTHONPATH", "")])
        env["RAMPART_TAIL_PROBE"] = str(probe)
        config = servers.rollout_config() if args.rollout else servers.PLAIN_CONFIG
        serve = servers.start_rampart(root, config, env)
        try:
            report = measure(serve, root, args, probe, events_on=args.rollout)
        finally:
            serve.stop()
        report["probes_after_stop"] = {
            str(pid): len(rows) for pid, rows in load_probes(probe).items()
        }
        name = "predict_tail_rollout.json" if args.rollout else "predict_tail.json"
        (out / name).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(digest(report), indent=2))
    return 0


def core_zero(
    data: Path, run: clients.OpenLoop, slow_us: int, worker: int, tids: dict[int, set[int]]
) -> dict[str, Any]:
    """What ran on core 0 during the run and during its stall episodes (perf sched)."""
    if not data.is_file():
        return {}
    segs = perf_sched.segments(data)
    worker_tids = tids[worker]
    evaluator_tids = set().union(*(t for p, t in tids.items() if p != worker))
    t0 = run.summary["t0_monotonic_ns"]
    t1 = t0 + int(run.summary["seconds"] * 1e9)
    return {
        "core0_ms": perf_sched.totals(segs, t0, t1, worker, worker_tids, evaluator_tids),
        "core0_in_stalls": perf_sched.during_episodes(
            segs, episodes(run, slow_us), worker, worker_tids, evaluator_tids
        ),
    }


def measure(
    serve: Serve, root: Path, args: argparse.Namespace, probe: Path, events_on: bool
) -> dict[str, Any]:
    assert serve.proc is not None
    worker = serve.proc.pid
    port = servers.port_of(serve)
    n = servers.n_features()
    rate = args.rate
    if rate is None:  # before any rollout: wrk sends one request id over and over
        body = servers.bodies(n, 1, False)[0]
        script = clients.wrk_script(root / "one.lua", body, clients.MSGPACK)
        clients.closed_loop(port, script, 2)
        rate = round(clients.closed_loop(port, script, 5)["rps"] / 2)
    events = None
    if events_on:
        servers.hold_phase4(serve)
        events = servers.Events(serve.url, args.events_rate)
    try:
        body_file = clients.write_bodies(root / "bodies.bin", servers.bodies(n, 1, False))
        clients.open_loop(port, body_file, rate, 2)  # warm
        runs = []
        evaluator = children(worker)
        tids = {
            p: {int(t.name) for t in Path(f"/proc/{p}/task").iterdir()}
            for p in [worker, *evaluator]
        }
        for i in range(args.runs):
            perf = perf_sched.record(root / f"perf-{i}.data") if args.perf else None
            before = {p: sched(p) for p in [worker, *evaluator]}
            run = clients.open_loop(port, body_file, rate, args.seconds)
            after = {p: sched(p) for p in [worker, *evaluator]}
            if perf is not None:
                perf_sched.stop(perf)
            runs.append(
                (run, {str(p): {k: after[p][k] - before[p][k] for k in after[p]} for p in after})
            )
        spy: dict[str, Any] = {}
        if args.pyspy:
            procs = {"worker": worker} | {f"evaluator {p}": p for p in evaluator}
            spies = {
                name: pyspy(pid, args.seconds, root / f"{pid}.txt") for name, pid in procs.items()
            }
            run = clients.open_loop(port, body_file, rate, args.seconds)
            for p in spies.values():
                p.wait(60)
            spy = {
                "client": run.report(),
                "hottest": {
                    name: hottest(root / f"{pid}.txt")
                    for name, pid in procs.items()
                    if (root / f"{pid}.txt").is_file()
                },
            }
    finally:
        if events is not None:
            events.stop()
    status = serve.status()
    rollout_after = {"phase": servers.phase_of(status), "state": status.get("state")}
    flush_probes(worker, probe)
    probes = load_probes(probe)
    slow_us = int(args.slow_ms * 1000)
    return {
        "rate": rate,
        "seconds": args.seconds,
        "rollout": events_on,
        "rollout_after_runs": rollout_after,
        "worker_pid": worker,
        "evaluator_pids": evaluator,
        "runs": [
            attribute(run, probes, worker, slow_us)
            | {"sched": cs}
            | core_zero(root / f"perf-{i}.data", run, slow_us, worker, tids)
            for i, (run, cs) in enumerate(runs)
        ],
        "pyspy": spy,
    }


def _line(s: dict[str, Any]) -> str:
    period = f"{s['period_ms']:.1f}" if s["period_ms"] is not None else "-"
    return (
        f"{s['source']}: n={s['count']} period={period}ms "
        f"dur p50/p99/max={s['duration_p50_us']:.0f}/{s['duration_p99_us']:.0f}/"
        f"{s['duration_max_us']:.0f}us slow reqs={s['slow_requests_overlapped']} "
        f"episodes={s['episodes_overlapped']}"
    )


def digest(report: dict[str, Any]) -> dict[str, Any]:
    """Per run: the client's percentiles and the sources that overlap slow requests."""
    out = []
    for r in report["runs"]:
        c = r["client"]
        out.append(
            {
                "p50/p99/p99.9/max ms": [c["p50_ms"], c["p99_ms"], c["p99.9_ms"], c["max_ms"]],
                "slow requests / episodes": [r["slow_requests"], r["episodes"]],
                "unexplained": r["unexplained_slow_requests"],
                "sources": [_line(s) for s in r["sources"]],
                "gc0 per request": round(r["worker_gc0_per_request"], 3),
                "core 0 during stalls": r.get("core0_in_stalls"),
                "core 0 over the run (ms)": r.get("core0_ms"),
                "sched (cpu ms, runqueue wait ms, involuntary switches)": {
                    pid: [
                        round(v["cpu_ns"] / 1e6),
                        round(v["runqueue_wait_ns"] / 1e6),
                        v.get("nonvoluntary_ctxt_switches"),
                    ]
                    for pid, v in r["sched"].items()
                },
            }
        )
    return {"rate": report["rate"], "runs": out, "pyspy": report["pyspy"].get("hottest")}


if __name__ == "__main__":
    raise SystemExit(main())
