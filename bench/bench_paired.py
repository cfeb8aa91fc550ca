"""Benchmark: what paired scoring costs /predict in phase 1, measured from outside.

Three `rampart serve --workers 1` on core 0 (worker and evaluator, `[serve] evaluator_cpu`),
each with the demo champion and the better challenger in a rollout held in phase 1 (3%;
the default policy's phase 1 lasts a day), differing only in `[paired]`:

    off       enabled = false
    on        the defaults: every challenger request, at most 100 a second per worker
    uncapped  every challenger request, no effective cap (max_per_s = 100000)

wrk on core 1 (closed loop, one thread, 16 keep-alive connections) posts one positional row
in msgpack, rotating through 1,000 bodies with their own request ids and rows (drawn from
the simulator's ad traffic, `harness.ground_truth`), 30 of which
the server's split sends to the challenger (exactly its 3%). Rounds alternate A B C, C B A,
..., so drift on this shared machine hits all alike; medians and per-round ratios to `off`
are reported, with requests per server CPU-second (schedstat) beside the wall-clock rate,
wrk's p50 / p99, and how many challenger requests each server paired (its counters).
Last, in-process on core 0 with the servers gone, what one pair costs the worker
(`pair_cost_us`): times the pairs per request `on` made, over the server's CPU per request,
it is the throughput share pairing takes, a figure the neighbours on a shared core move
far less than they move the wall-clock ratios.

    flock /tmp/rampart-bench.lock python -m bench.bench_paired [--rounds 4] [--seconds 8]

Results: bench/results/paired.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from bench import bench_predict_clients as clients
from bench import bench_predict_servers as servers
from harness import ground_truth
from harness.scenario_models import model_path
from harness.serve_process import Serve
from router import hashing, snapshot
from router.control import ControlBlock
from router.layout import Counter
from router.registry import Registry
from router.shared_memory import SharedMemory

CONTENDERS = {
    "off": "[paired]\nenabled = false\n",
    "on": "",
    "uncapped": "[paired]\nmax_per_s = 100000.0\n",
}
ORDER = tuple(CONTENDERS)
N_BODIES = 1000
PHASE_1_BP = 300

ROTATING_LUA = """-- bodies from a file (4-byte little-endian length, then the body), posted in turn
local f = assert(io.open("BODY_PATH", "rb"))
local data = f:read("*a")
f:close()
local bodies, at = {}, 1
while at <= #data do
  local a, b, c, d = data:byte(at, at + 3)
  local n = a + b * 256 + c * 65536 + d * 16777216
  bodies[#bodies + 1] = data:sub(at + 4, at + 3 + n)
  at = at + 4 + n
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/msgpack"

function request()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def state_of(serve: Serve) -> Path:
    return Path(serve.cmd[serve.cmd.index("--state-dir") + 1])


def start(root: Path, name: str) -> Serve:
    """A server of contender `name` with its rollout running in phase 1."""
    config = servers.PLAIN_CONFIG + CONTENDERS[name]
    # The latency guardrail must not pull the challenger of a loaded, shared core.
    config += "[guardrails]\nmax_p99_ms = 1000.0\n"
    serve = servers.start_rampart(root / name, config)
    registry = Registry(state_of(serve))
    try:
        version = registry.register(model_path("challenger_better")).version
    finally:
        registry.close()
    serve.admin("start", {"version": str(version)})
    for _ in range(600):
        status = serve.status()
        if status.get("state") == "running" and status.get("effective_split_bp") == PHASE_1_BP:
            return serve
        time.sleep(0.1)
    raise RuntimeError(f"{name}: the phase-1 split was not in force: {serve.status()}")


def bodies(serve: Serve, n_features: int) -> list[bytes]:
    """N_BODIES one-row msgpack bodies, 3% of them (evenly spaced) sent to the challenger by
    this server's split: its hash seed is its own."""
    shm = SharedMemory.attach(state_of(serve))
    try:
        seed = ControlBlock(shm).hash_seed
    finally:
        shm.close()
    want = round(N_BODIES * PHASE_1_BP / 10_000)
    ids: dict[bool, list[str]] = {True: [], False: []}
    i = 0
    while len(ids[True]) < want or len(ids[False]) < N_BODIES:
        rid = f"bench-{i}"
        ids[hashing.is_challenger(rid, PHASE_1_BP, seed)].append(rid)
        i += 1
    every = N_BODIES // want
    order = [
        ids[True].pop() if k % every == 0 and ids[True] else ids[False].pop()
        for k in range(N_BODIES)
    ]
    # Rows from the simulator's ad traffic: the models' own distribution. (On rows unlike
    # anything they were trained on, such as standard normal noise, the champion and the
    # better challenger disagree, r 0.2, and paired_correlation rightly pulls it.)
    x = ground_truth.sample_features(np.random.default_rng(5), N_BODIES).astype(np.float32)
    assert x.shape[1] == n_features
    out = []
    for rid, row in zip(order, x.tolist(), strict=True):
        request = {
            "request_id": rid,
            "features": row,
            "segment": {"publisher_category": "news", "device_type": "mobile"},
        }
        out.append(bytes(msgpack.packb(request)))
    return out


def counters(serve: Serve) -> dict[str, int]:
    shm = SharedMemory.attach(state_of(serve))
    try:
        snap = snapshot.take(shm)
    finally:
        shm.close()
    c = snap.challenger
    return {
        "challenger_requests": c.counter(Counter.REQUESTS),
        "paired": c.counter(Counter.PAIRED),
        "pairs_dropped": c.counter(Counter.PAIRS_DROPPED),
    }


def run(serve: Serve, script: Path, seconds: float) -> dict[str, Any]:
    pids = servers.process_tree(serve.proc.pid if serve.proc else 0)
    before_cpu, before_wait = servers.sched_ns(pids)
    before = counters(serve)
    r = clients.closed_loop(servers.port_of(serve), script, seconds)
    cpu, wait = servers.sched_ns(pids)
    after = counters(serve)
    r["server_cpu_s"] = (cpu - before_cpu) / 1e9
    r["server_waiting_s"] = (wait - before_wait) / 1e9
    r["requests_per_cpu_s"] = r["requests"] / max(r["server_cpu_s"], 1e-9)
    r.update({k: after[k] - before[k] for k in after})
    return r


def pair_cost_us(repeats: int = 7, n: int = 2000) -> dict[str, float]:
    """In-process, on this core: what pairing one challenger request costs the worker
    (`Pairing.offer` on the hot path, then `Pairing.score`: the champion's run on the row,
    the pair kernel, a counter), and the champion's run alone. Medians of `repeats` means
    over `n` pairs, in µs of this thread's CPU time."""
    from router.config import PairedConfig
    from router.layout import slot_dtype
    from router.models import Model
    from router.paired import Pairing, record_pairs

    os.sched_setaffinity(0, {servers.SERVER_CORE})
    champion = Model(model_path("champion"), 1)
    x = ground_truth.sample_features(np.random.default_rng(9), n).astype(np.float32)
    rows = [x[i : i + 1] for i in range(n)]
    outs = [champion.predict(r) for r in rows]
    scratch = np.zeros(1, slot_dtype(4, 4))
    addr = scratch.ctypes.data
    pairing = Pairing(PairedConfig(max_per_s=1e9))
    record_pairs(addr, outs[0], outs[0])  # the kernel loaded before the clock starts
    paired, alone = [], []
    clock = time.thread_time_ns  # CPU time: a neighbour holding the core is not counted
    for _ in range(repeats):
        t0 = clock()
        for r, out in zip(rows, outs, strict=True):
            pairing.offer(7, 300, champion, addr, r, out)
            pair = pairing.pending
            pairing.pending = None
            assert pair is not None
            pairing.score(pair, 7)
        t1 = clock()
        for r in rows:
            champion.predict(r)
        t2 = clock()
        paired.append((t1 - t0) / n / 1000)
        alone.append((t2 - t1) / n / 1000)
    return {"pair_us": statistics.median(paired), "champion_run_us": statistics.median(alone)}


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ORDER:
        rs = runs[name]
        out[name] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "requests_per_cpu_s": statistics.median(r["requests_per_cpu_s"] for r in rs),
            "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1000,
            "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
            "paired_share": sum(r["paired"] for r in rs)
            / max(sum(r["challenger_requests"] for r in rs), 1),
            "server_waiting_s": statistics.median(r["server_waiting_s"] for r in rs),
            "non_2xx": sum(r["non_2xx"] for r in rs),
        }
        if name != "off":
            base = runs["off"]
            ratios = [a["rps"] / b["rps"] for a, b in zip(rs, base, strict=True)]
            cpu = [
                a["requests_per_cpu_s"] / b["requests_per_cpu_s"]
                for a, b in zip(rs, base, strict=True)
            ]
            out[name]["ratio_to_off"] = statistics.median(ratios)
            out[name]["ratios_per_round"] = ratios
            out[name]["cpu_ratio_to_off"] = statistics.median(cpu)
            out[name]["cpu_ratios_per_round"] = cpu
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="paired scoring's cost to /predict, phase 1")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    started: dict[str, Serve] = {}
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in ORDER}
    with tempfile.TemporaryDirectory(prefix="bench-paired-") as tmp:
        root = Path(tmp)
        try:
            width = servers.n_features()
            scripts = {}
            for name in ORDER:
                started[name] = start(root, name)
                body_file = clients.write_bodies(root / f"{name}.bin", bodies(started[name], width))
                script = root / f"{name}.lua"
                lua = ROTATING_LUA.replace("BODY_PATH", str(body_file))
                script.write_text(lua + clients.WRK_DONE_LUA)
                scripts[name] = script
                clients.closed_loop(servers.port_of(started[name]), script, 3)  # warm
            for r in range(args.rounds):
                for name in ORDER if r % 2 == 0 else ORDER[::-1]:
                    result = run(started[name], scripts[name], args.seconds)
                    runs[name].append(result)
                    print(f"{name}: {json.dumps(result)}", flush=True)
            after = {n: servers.phase_of(s.status()) for n, s in started.items()}
            if set(after.values()) != {1}:
                raise RuntimeError(f"a rollout left phase 1 during the runs: {after}")
        finally:
            for serve in started.values():
                serve.stop()
    cost = pair_cost_us()  # after the servers are gone: alone on the core
    table = summary(runs)
    off = runs["off"]
    cpu_us = 1e6 * sum(r["server_cpu_s"] for r in off) / sum(r["requests"] for r in off)
    on = runs["on"]
    pairs_per_request = sum(r["paired"] for r in on) / sum(r["requests"] for r in on)
    cost["server_cpu_us_per_request_off"] = cpu_us
    cost["pairs_per_request_on"] = pairs_per_request
    # The share of the worker's CPU pairing takes at the measured rates: throughput's cost.
    cost["estimated_cost"] = pairs_per_request * cost["pair_us"] / cpu_us
    report = {
        "command": "python -m bench.bench_paired "
        f"--rounds {args.rounds} --seconds {args.seconds:g}",
        "phase_after": after,
        "summary": table,
        "pair_cost": cost,
        "runs": runs,
    }
    print(json.dumps({"summary": table, "pair_cost": cost}, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paired.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
