"""Benchmark: rampart's /predict against a bare ASGI baseline, measured from outside.

Both contenders run one uvicorn worker pinned to core 0 (`rampart serve --workers 1` with
`[serve] evaluator_cpu = 0`: its evaluator shares the worker's core); the clients run on
core 1. Contenders alternate A B A B so drift on this shared machine hits both alike;
medians and ratios are reported and every run is listed.

1. Closed loop, Debian's `wrk` (16 connections, one body from a file): requests per second
   for one row in msgpack, one row in JSON, 100 rows in msgpack.
2. Open loop, bench/oloop.c (32 connections, a fixed schedule, latency from the intended
   send time): at half of rampart's median max (one row, msgpack), `--runs` runs of
   `--seconds` per contender: p50, p99, p99.9, max and the client's send jitter;
   a. with no rollout;
   b. during a rollout held in phase 4 (paused there), with /predict and its impressions and
      clicks at `--events-rate` from wrk (servers.WrkEvents) on the client's core during
      rampart's runs (stopped during the bare server's: on core 0 it would be a neighbour
      only the bare server pays for).
   `--control` adds a second bare server to both sections: its ratios to the first, run by
   run, are what the same server scores against itself here (the noise floor of a ratio).

    python -m bench.bench_predict [--rounds 3] [--closed-seconds 5] [--runs 5] [--seconds 10]
    python -m bench.bench_predict --closed-only   # throughput only: predict_closed.json
    python -m bench.bench_predict --open-rate 6400   # the open loop only: predict_open.json
    python -m bench.bench_predict --open-rate 6400 --control   # and the noise floor

Run it under `flock /tmp/rampart-bench.lock`. Results: bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bench_predict_clients as clients
from bench import bench_predict_servers as servers

ORDER = ("rampart", "bare")
ASGI = "rampart-asgi"  # `--with-asgi`: rampart with `[serve] answer_in_place = false`
CONTROL = "bare-control"  # `--control`: a second bare server, the open loop's noise floor
PAYLOADS = {  # name: (rows, JSON?)
    "1 row msgpack": (1, False),
    "1 row JSON": (1, True),
    "100 rows msgpack": (100, False),
}
TARGETS = {"1 row msgpack": 1.0, "1 row JSON": 1.0, "100 rows msgpack": 0.97}


def alternate(
    rounds: int, run: Callable[[str], Any], order: tuple[str, ...] = ORDER
) -> dict[str, list[Any]]:
    """`run(contender)` in A B, B A, A B ... order; results per contender in run order."""
    out: dict[str, list[Any]] = {n: [] for n in order}
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            out[name].append(run(name))
    return out


def open_loop_section(
    ports: dict[str, int],
    pids: dict[str, int],
    body_file: Path,
    rate: int,
    runs: int,
    seconds: float,
    during: Callable[[str], contextlib.AbstractContextManager[dict[str, float] | None]]
    | None = None,
    order: tuple[str, ...] = ORDER,
    ready: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """`runs` alternating open-loop runs per contender at `rate`; medians and per-run ratios,
    each run with its server's CPU time and time spent waiting for the CPU. `during(name)`
    wraps each of contender `name`'s runs (the simulator's events to rampart). With
    CONTROL in `order`, a second bare server's ratios to the first are the noise floor: what
    the same server scores against itself from one run to the next. The other contenders
    are stopped during each run (servers.paused); `ready[name]()` waits, once `name` runs
    again, for the state it serves in (rampart: its evaluator's heartbeat fresh)."""

    def one(name: str) -> dict[str, Any]:
        tree = servers.process_tree(pids[name])
        with (
            servers.paused([pids[n] for n in order if n != name]),
            during(name) if during is not None else contextlib.nullcontext() as events,
        ):
            if ready and name in ready:
                ready[name]()
            cpu0, wait0 = servers.sched_ns(tree)
            result = clients.open_loop(ports[name], body_file, rate, seconds).report()
            cpu1, wait1 = servers.sched_ns(tree)
        if events:  # filled in as the block ends
            result["events"] = events
        result["server_cpu_s"] = (cpu1 - cpu0) / 1e9
        result["server_runqueue_wait_s"] = (wait1 - wait0) / 1e9
        print(f"  open loop {name}: {json.dumps(result)}", flush=True)
        return result

    listed = alternate(runs, one, order)
    keys = ("p50_ms", "p99_ms", "p99.9_ms", "max_ms")
    medians = {n: {k: statistics.median(r[k] for r in listed[n]) for k in keys} for n in order}
    for n in order:
        medians[n]["jitter_p99_ms"] = statistics.median(r["jitter"]["p99_ms"] for r in listed[n])
        medians[n]["server_runqueue_wait_s"] = statistics.median(
            r["server_runqueue_wait_s"] for r in listed[n]
        )
        medians[n]["kept_up"] = all(r["kept_up"] for r in listed[n])
    section: dict[str, Any] = {"rate": rate, "seconds": seconds, "runs": listed, "median": medians}
    for name, prefix in (("rampart", ""), (CONTROL, "control_")):
        if name not in order:
            continue
        paired = list(zip(listed[name], listed["bare"], strict=True))
        for q in ("p99", "p99.9"):
            section[f"{prefix}{q}_ratio_per_run"] = [a[f"{q}_ms"] / b[f"{q}_ms"] for a, b in paired]
            section[f"{prefix}{q}_ratio"] = medians[name][f"{q}_ms"] / medians["bare"][f"{q}_ms"]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rampart /predict vs a bare ASGI baseline")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop rounds per payload")
    parser.add_argument("--closed-seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5, help="open-loop runs per contender")
    parser.add_argument("--seconds", type=float, default=10.0, help="per open-loop run")
    parser.add_argument("--events-rate", type=float, default=200.0, help="during the rollout")
    parser.add_argument("--no-rollout", action="store_true", help="skip the rollout section")
    parser.add_argument(
        "--closed-only", action="store_true", help="throughput only: skip both open-loop sections"
    )
    parser.add_argument(
        "--with-asgi",
        action="store_true",
        help=f"closed loop: also {ASGI}, rampart answering through its ASGI handlers only",
    )
    parser.add_argument(
        "--open-rate",
        type=int,
        default=0,
        help="skip the closed loop; the open loop at this rate (results: predict_open.json)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help=f"open loop: also {CONTROL}, a second bare server (the runs' noise floor)",
    )
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    servers.exit_cleanly_on_sigterm()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clients.oloop_binary()  # compile before anything runs

    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp:
        root = Path(tmp)
        report: dict[str, Any] = {
            "setup": "one uvicorn worker each on core 0 (rampart's evaluator too), clients on "
            "core 1; wrk -t1 -c16 closed loop; bench/oloop.c -c32 open loop",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_before": os.getloadavg(),
        }
        bare = servers.Bare()
        control = servers.Bare() if args.control else None
        serve = asgi = None
        order = (*ORDER, ASGI) if args.with_asgi else ORDER
        try:
            serve = servers.start_rampart(root / "plain", servers.PLAIN_CONFIG)
            ports = {"rampart": servers.port_of(serve), "bare": bare.port}
            assert serve.proc is not None
            pids = {"rampart": serve.proc.pid, "bare": bare.proc.pid}
            open_order: tuple[str, ...] = ORDER
            if control is not None:
                ports[CONTROL], pids[CONTROL] = control.port, control.proc.pid
                open_order = (*ORDER, CONTROL)
            if args.with_asgi:
                asgi = servers.start_rampart(root / "asgi", servers.ASGI_CONFIG)
                assert asgi.proc is not None
                ports[ASGI], pids[ASGI] = servers.port_of(asgi), asgi.proc.pid
            n_features = servers.n_features()
            report["closed_loop"] = closed = {}
            # `--open-rate`: the open-loop sections alone, at that rate.
            for payload, (rows, as_json) in PAYLOADS.items() if not args.open_rate else ():
                bodies = servers.bodies(n_features, rows, as_json)
                kind = clients.JSON if as_json else clients.MSGPACK
                script = clients.wrk_script(root / f"{rows}-{as_json}.lua", bodies[0], kind)
                for name in order:  # warm: JIT, caches, the connection pool
                    clients.closed_loop(ports[name], script, 2)

                def run(
                    name: str, script: Path = script, payload: str = payload
                ) -> dict[str, float]:
                    tree = servers.process_tree(pids[name])
                    cpu0, wait0 = servers.sched_ns(tree)
                    r = clients.closed_loop(ports[name], script, args.closed_seconds)
                    cpu1, wait1 = servers.sched_ns(tree)
                    if r["non_2xx"] or r["socket_errors"]:
                        raise RuntimeError(f"{name} {payload}: {r}")
                    out = {
                        "rps": float(r["rps"]),
                        "per_cpu_s": r["requests"] / max((cpu1 - cpu0) / 1e9, 1e-9),
                        "server_cpu_s": (cpu1 - cpu0) / 1e9,
                        "server_runqueue_wait_s": (wait1 - wait0) / 1e9,
                    }
                    print(f"  closed loop {payload} {name}: {json.dumps(out)}", flush=True)
                    return out

                listed = alternate(args.rounds, run, order)
                med = {n: statistics.median(x["rps"] for x in v) for n, v in listed.items()}
                eff = {n: statistics.median(x["per_cpu_s"] for x in v) for n, v in listed.items()}
                closed[payload] = {
                    "runs": listed,
                    "median_rps": med,
                    "ratio": med["rampart"] / med["bare"],
                    "ratio_per_round": [
                        a["rps"] / b["rps"]
                        for a, b in zip(listed["rampart"], listed["bare"], strict=True)
                    ],
                    "median_requests_per_cpu_s": eff,
                    "cpu_ratio": eff["rampart"] / eff["bare"],
                    "target": TARGETS[payload],
                }
                if args.with_asgi:
                    closed[payload][ASGI] = {
                        "ratio": med[ASGI] / med["bare"],
                        "cpu_ratio": eff[ASGI] / eff["bare"],
                        "in_place_over_asgi_cpu_ratio": eff["rampart"] / eff[ASGI],
                    }
            if asgi is not None:
                asgi.stop()
                asgi = None
            if args.closed_only:
                return _finish(report, out, "predict_closed.json")
            rate = args.open_rate or round(closed["1 row msgpack"]["median_rps"]["rampart"] / 2)
            body_file = clients.write_bodies(
                root / "bodies.bin", servers.bodies(n_features, 1, False)
            )
            # `ports` and `pids` are the same dicts when the rollout's rampart replaces this one.
            section_of = functools.partial(
                open_loop_section, ports, pids, body_file, rate, args.runs, args.seconds
            )
            print(f"open loop at {rate} req/s, no rollout", flush=True)
            report["open_loop"] = section_of(
                order=open_order, ready={"rampart": serve.wait_for_evaluator}
            )
            serve.stop()
            serve = None
            if not args.no_rollout:
                serve = servers.start_rampart(root / "rollout", servers.rollout_config())
                climb_s = servers.hold_phase4(serve)
                ports["rampart"] = servers.port_of(serve)
                assert serve.proc is not None
                pids["rampart"] = serve.proc.pid
                print(f"open loop at {rate} req/s, rollout paused in phase 4", flush=True)
                live = serve

                def events_to_rampart(
                    name: str,
                ) -> contextlib.AbstractContextManager[dict[str, float] | None]:
                    # Only during rampart's runs: the events' traffic to rampart on core 0
                    # during the bare server's runs would be a neighbour the bare one pays for.
                    if name != "rampart":
                        return contextlib.nullcontext()
                    return servers.events_flowing(live, args.events_rate, root)

                section = section_of(
                    during=events_to_rampart,
                    order=open_order,
                    ready={"rampart": live.wait_for_evaluator},
                )
                status = serve.status()
                section["rollout"] = {
                    "phase_4_after_s": climb_s,
                    "events_rate": args.events_rate,
                    "phase_after": servers.phase_of(status),
                    "state_after": status.get("state"),
                    "split_bp": status.get("split_bp"),
                    "arms": status.get("arms"),
                }
                report["open_loop_rollout"] = section
        finally:
            for server in (serve, asgi):
                if server is not None:
                    server.stop()
            for b in (bare, control):
                if b is not None:
                    b.stop()
    return _finish(report, out, "predict_open.json" if args.open_rate else "predict.json")


def _finish(report: dict[str, Any], out: Path, name: str) -> int:
    report["load_average_after"] = os.getloadavg()
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary(report), indent=2))
    return 0


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a report."""
    out: dict[str, Any] = {
        f"throughput {k}": {
            "median_rps": v["median_rps"],
            "ratio": round(v["ratio"], 3),
            "requests_per_cpu_s": v["median_requests_per_cpu_s"],
            "cpu_ratio": round(v["cpu_ratio"], 3),
            **({ASGI: v[ASGI]} if ASGI in v else {}),
        }
        for k, v in report["closed_loop"].items()
    }
    for key in ("open_loop", "open_loop_rollout"):
        if key in report:
            s = report[key]
            out[key] = {
                "rate": s["rate"],
                "median": s["median"],
                "p99_ratio": round(s["p99_ratio"], 2),
                "p99_ratio_per_run": [round(x, 2) for x in s["p99_ratio_per_run"]],
                "p99.9_ratio": round(s["p99.9_ratio"], 2),
                "p99.9_ratio_per_run": [round(x, 2) for x in s["p99.9_ratio_per_run"]],
            }
            if "control_p99_ratio_per_run" in s:
                for q in ("p99", "p99.9"):
                    out[key][f"{CONTROL} {q}_ratio_per_run"] = [
                        round(x, 2) for x in s[f"control_{q}_ratio_per_run"]
                    ]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
