"""Benchmark: how the evaluator gives way to the worker on their shared core, and what that
does to /predict's tail and to the evaluator itself.

One `rampart serve --workers 1` on core 0 (its evaluator too), the bare baseline on core 0,
the clients on core 1, as in bench.bench_predict. Between runs the benchmark sets the live
evaluator's scheduling, and the worker's, from outside (bench.sched_share, every thread),
so the contenders differ in that alone (lifting a process out of SCHED_IDLE needs root or
CAP_SYS_NICE):
- `batch`: the evaluator under SCHED_BATCH at nice 5 with the kernel's slice, the worker as
  started: rampart as it ships;
- `evaluator-short-slice`: the same with a 0.1 ms slice for the evaluator;
- `worker-short-slice`: the same with a 0.1 ms slice for the worker instead;
- `idle`: the evaluator under SCHED_IDLE.

1. Open loop (bench/oloop.c, latency from the intended send time) at `--rate`, `--runs`
   runs of `--seconds` per contender, the bare server's runs alternating with them: p99 and
   p99.9 per run and each one's ratio to the bare server's run in the same round; with no
   rollout, then during a rollout held in phase 4 with events flowing (servers.WrkEvents on
   the client's core).
2. Saturation: wrk keeps the worker's core busy for `--saturate-seconds` per contender
   during the phase-4 rollout. The evaluator's CPU time, and the oldest its heartbeat got
   (sampled from the worker's /status every 0.25 s; 3 s is stale: every request then goes to
   the champion) say whether a policy starves it.

3. `--placement` (alone): during the phase-4 rollout, the evaluator ticking on the worker's
   core, moved to the client's, or stopped, alternating: what its ticks cost the tail.

    python -m bench.bench_evaluator_sched [--rate 6394] [--runs 5] [--seconds 10]
    python -m bench.bench_evaluator_sched --placement   # evaluator_placement.json

Run it under `flock /tmp/rampart-bench.lock`. Results: bench/results/evaluator_sched.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx

from bench import bench_predict_clients as clients
from bench import bench_predict_servers as servers
from bench import sched_share
from bench.bench_predict import alternate
from bench.bench_predict_servers import EVENTS_CORE, SERVER_CORE
from guardrails.cpu_budget import EVALUATOR_NICE
from harness.serve_process import Serve

BATCH = sched_share.Share(os.SCHED_BATCH, EVALUATOR_NICE)
SHORT = sched_share.MIN_SLICE_NS
WORKER = sched_share.Share(os.SCHED_OTHER, 0)
# name: (the evaluator's share, the worker's)
SHARES = {
    "batch": (BATCH, WORKER),
    "evaluator-short-slice": (sched_share.Share(os.SCHED_BATCH, EVALUATOR_NICE, SHORT), WORKER),
    "worker-short-slice": (BATCH, sched_share.Share(os.SCHED_OTHER, 0, SHORT)),
    "idle": (sched_share.Share(os.SCHED_IDLE, 19), WORKER),
}
BARE = "bare"


def evaluator_pid(serve: Serve) -> int:
    status = serve.status()
    return int(status["evaluator"]["pid"])


def arrange(serve: Serve, name: str) -> None:
    """Give the live evaluator and the worker (with --workers 1, `rampart serve` itself)
    arrangement `name`, every thread of each."""
    evaluator, worker = SHARES[name]
    assert serve.proc is not None
    sched_share.apply_to_process(evaluator, evaluator_pid(serve), exact=True)
    sched_share.apply_to_process(worker, serve.proc.pid, exact=True)


def open_loop_section(
    serve: Serve,
    bare: servers.Bare,
    body_file: Path,
    rate: float,
    runs: int,
    seconds: float,
    during: Callable[[str], AbstractContextManager[dict[str, float] | None]],
) -> dict[str, Any]:
    """Alternating runs: each policy applied to the live evaluator before its run."""
    port = servers.port_of(serve)
    assert serve.proc is not None
    pids = {BARE: bare.proc.pid, **{n: serve.proc.pid for n in SHARES}}

    def one(name: str) -> dict[str, Any]:
        if name in SHARES:
            arrange(serve, name)
        tree = servers.process_tree(pids[name])
        # The worker: with --workers 1, `rampart serve` itself (the bare server's process).
        worker = [pids[name]]
        w_cpu0, w_wait0 = servers.sched_ns(worker)
        other = pids["batch"] if name == BARE else pids[BARE]
        with servers.paused([other]), during(name) as events:
            if name != BARE:
                serve.wait_for_evaluator()
            cpu0, wait0 = servers.sched_ns(tree)
            r = clients.open_loop(bare.port if name == BARE else port, body_file, rate, seconds)
            result = r.report()
            cpu1, wait1 = servers.sched_ns(tree)
        if events:  # filled in as the block ends
            result["events"] = events
        result["server_cpu_s"] = (cpu1 - cpu0) / 1e9
        result["server_runqueue_wait_s"] = (wait1 - wait0) / 1e9
        w_cpu1, w_wait1 = servers.sched_ns(worker)
        # What the policy is for: the time the worker was ready to serve and did not run.
        result["worker_cpu_s"] = (w_cpu1 - w_cpu0) / 1e9
        result["worker_runqueue_wait_ms"] = (w_wait1 - w_wait0) / 1e6
        print(f"    worker waited {result['worker_runqueue_wait_ms']:.1f} ms", flush=True)
        print(f"  {name}: p99 {result['p99_ms']} p99.9 {result['p99.9_ms']} ms", flush=True)
        return result

    order = (BARE, *SHARES)
    listed = alternate(runs, one, order)
    section: dict[str, Any] = {"rate": rate, "seconds": seconds, "runs": listed}
    for name in SHARES:
        paired = list(zip(listed[name], listed[BARE], strict=True))
        section[name] = {
            f"{q}_ratio_per_run": [round(a[f"{q}_ms"] / b[f"{q}_ms"], 3) for a, b in paired]
            for q in ("p99", "p99.9")
        }
    for name in order:
        section.setdefault(name, {})["median"] = {
            q: statistics.median(r[q] for r in listed[name])
            for q in ("p50_ms", "p99_ms", "p99.9_ms", "max_ms")
        }
        section[name]["median"]["jitter_p99_ms"] = statistics.median(
            r["jitter"]["p99_ms"] for r in listed[name]
        )
        section[name]["median"]["worker_runqueue_wait_ms"] = statistics.median(
            r["worker_runqueue_wait_ms"] for r in listed[name]
        )
    return section


@contextmanager
def heartbeat_watch(serve: Serve) -> Iterator[dict[str, float]]:
    """The oldest the evaluator's heartbeat (/status `evaluator.updated`) got while the block
    ran, and whether /status ever said stale."""
    out = {"max_heartbeat_age_s": 0.0, "stale_seen": 0.0, "samples": 0.0}
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.wait(0.25):
                try:
                    status = client.get(f"{serve.url}/status").json()
                except httpx.HTTPError:
                    continue
                age = time.time() - float(status["evaluator"]["updated"])
                out["max_heartbeat_age_s"] = max(out["max_heartbeat_age_s"], age)
                out["stale_seen"] = max(out["stale_seen"], float(bool(status.get("stale"))))
                out["samples"] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def saturation_section(serve: Serve, script: Path, seconds: float) -> dict[str, Any]:
    port = servers.port_of(serve)
    out: dict[str, Any] = {"seconds": seconds}
    for name in SHARES:
        pid = evaluator_pid(serve)
        arrange(serve, name)
        cpu0, wait0 = servers.sched_ns([pid])
        with heartbeat_watch(serve) as watched:
            r = clients.closed_loop(port, script, seconds)
        cpu1, wait1 = servers.sched_ns([pid])
        out[name] = {
            "rps": r["rps"],
            "evaluator_cpu_ms_per_s": (cpu1 - cpu0) / 1e6 / seconds,
            "evaluator_runqueue_wait_s": (wait1 - wait0) / 1e9,
            **watched,
        }
        print(f"  saturated, {name}: {json.dumps(out[name])}", flush=True)
    return out


PLACEMENTS = ("core-0", "core-1", "stopped")


def placement_section(
    serve: Serve, body_file: Path, args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    """`--placement`: in phase 4 with events flowing, the evaluator ticking on the worker's
    core (as configured), moved to the client's core, or stopped (SIGSTOP; the server runs
    with a long stale_after_s, so the split stays in force): what its ticks cost the tail."""
    port = servers.port_of(serve)

    def one(name: str) -> dict[str, Any]:
        pid = evaluator_pid(serve)
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), {EVENTS_CORE if name == "core-1" else SERVER_CORE})
        with servers.events_flowing(serve, args.events_rate, root):
            if name == "stopped":
                os.kill(pid, signal.SIGSTOP)
            try:
                result = clients.open_loop(port, body_file, args.rate, args.seconds).report()
            finally:
                os.kill(pid, signal.SIGCONT)
        status = serve.status()
        if servers.phase_of(status) != 4 or status.get("split_bp") != 4000:
            raise RuntimeError(f"not in phase 4 at a 40% split any more: {status}")
        print(f"  {name}: p99 {result['p99_ms']} p99.9 {result['p99.9_ms']} ms", flush=True)
        return result

    listed = alternate(args.runs, one, PLACEMENTS)
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "runs": listed,
        "median": {
            n: {q: statistics.median(r[q] for r in listed[n]) for q in ("p99_ms", "p99.9_ms")}
            for n in PLACEMENTS
        },
    }


def placement(args: argparse.Namespace, out: Path) -> int:
    report: dict[str, Any] = {
        "setup": "rampart serve --workers 1 on core 0, phase 4 paused, events from wrk and "
        "oloop on core 1; the evaluator on core 0, moved to core 1, or stopped per run",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp:
        root = Path(tmp)
        n_features = servers.n_features()
        body_file = clients.write_bodies(root / "bodies.bin", servers.bodies(n_features, 1, False))
        config = servers.rollout_config().replace("stale_after_s = 3.0", "stale_after_s = 120.0")
        assert "stale_after_s = 120.0" in config
        serve = servers.start_rampart(root / "rollout", config)
        try:
            report["phase_4_after_s"] = servers.hold_phase4(serve)
            report["placement"] = placement_section(serve, body_file, args, root)
        finally:
            serve.stop()
    report["load_average_after"] = os.getloadavg()
    (out / "evaluator_placement.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["placement"]["median"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the evaluator's scheduling vs /predict's tail")
    parser.add_argument("--rate", type=float, default=6394.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events-rate", type=float, default=200.0)
    parser.add_argument("--saturate-seconds", type=float, default=20.0)
    parser.add_argument("--no-rollout", action="store_true", help="the no-rollout section only")
    parser.add_argument(
        "--placement",
        action="store_true",
        help="only: phase 4 with the evaluator on core 0, on core 1, or stopped "
        "(results: evaluator_placement.json)",
    )
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    servers.exit_cleanly_on_sigterm()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.placement:
        return placement(args, out)
    report: dict[str, Any] = {
        "setup": "rampart serve --workers 1 and its evaluator on core 0, bare server on "
        "core 0, oloop/wrk on core 1; the evaluator's policy set from outside between runs",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": os.getloadavg(),
        "shares": {n: {"evaluator": vars(e), "worker": vars(w)} for n, (e, w) in SHARES.items()},
    }
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp:
        root = Path(tmp)
        bare = servers.Bare()
        serve = None
        try:
            n_features = servers.n_features()
            body_file = clients.write_bodies(
                root / "bodies.bin", servers.bodies(n_features, 1, False)
            )
            serve = servers.start_rampart(root / "plain", servers.PLAIN_CONFIG)
            print(f"open loop at {args.rate:g} req/s, no rollout", flush=True)
            report["no_rollout"] = open_loop_section(
                serve, bare, body_file, args.rate, args.runs, args.seconds, lambda n: nullcontext()
            )
            serve.stop()
            serve = None
            if not args.no_rollout:
                serve = servers.start_rampart(root / "rollout", servers.rollout_config())
                report["phase_4_after_s"] = servers.hold_phase4(serve)
                live = serve

                def events(name: str) -> AbstractContextManager[dict[str, float] | None]:
                    if name == BARE:  # see bench.bench_predict: a neighbour only bare pays for
                        return nullcontext()
                    return servers.events_flowing(live, args.events_rate, root)

                print(f"open loop at {args.rate:g} req/s, phase 4, events flowing", flush=True)
                report["phase_4"] = open_loop_section(
                    serve, bare, body_file, args.rate, args.runs, args.seconds, events
                )
                print("saturated worker core, phase 4", flush=True)
                script = clients.wrk_script(
                    root / "one.lua", servers.bodies(n_features, 1, False)[0], clients.MSGPACK
                )
                report["saturated"] = saturation_section(serve, script, args.saturate_seconds)
                report["phase_after"] = servers.phase_of(serve.status())
        finally:
            if serve is not None:
                serve.stop()
            bare.stop()
    report["load_average_after"] = os.getloadavg()
    (out / "evaluator_sched.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary(report), indent=2))
    return 0


def summary(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("no_rollout", "phase_4"):
        if key in report:
            out[key] = {
                n: {
                    **report[key][n]["median"],
                    **{k: v for k, v in report[key][n].items() if k != "median"},
                }
                for n in (BARE, *SHARES)
            }
    if "saturated" in report:
        out["saturated"] = report["saturated"]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
