"""Benchmark: the fleet store (Redis) at 500 hosts publishing 20 KiB of evidence a second.

Against a private `redis-server` (or `--url`), measures:
- a host tick (`FleetStore.tick`: heartbeat + publish 20 KiB + lease attempt + read the
  decision and generation): round trips (socket sends), request/response bytes, latency;
- the store's footprint: memory for 500 hosts' evidence, commands and bytes per second;
- the fleet paced at one tick per host per second (several processes) while a leader
  merges `all_evidence` each second: tick and merge latency under load, Redis CPU;
- the same hosts unpaced: how many host ticks a second one Redis serves (headroom).

    python -m bench.bench_fleet_store [--hosts 500] [--blob-kib 20] [--seconds 10]
        [--procs 4] [--aof] [--url redis://...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis

from guardrails.fleet_store import FleetStore
from harness.redis_process import private_redis

FLEET = "bench"
ROLLOUT = "r1"
LEASE_MS = 5_000
INFO = {"models": [1, 2], "breach": False, "split_bp": 300}


def _stats(client: redis.Redis) -> dict[str, float]:
    info: dict[str, Any] = client.info("all")
    return {
        "in": info["total_net_input_bytes"],
        "out": info["total_net_output_bytes"],
        "commands": info["total_commands_processed"],
        "cpu": info["used_cpu_user"] + info["used_cpu_sys"],
        "memory": info["used_memory"],
        "aof_rewrites": info.get("aof_rewrites", 0),
        "aof_bytes": info.get("aof_current_size", 0),
        "t": time.perf_counter(),
    }


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(1e3 * statistics.median(values), 3),
        "p99_ms": round(1e3 * values[min(len(values) - 1, int(0.99 * len(values)))], 3),
        "max_ms": round(1e3 * values[-1], 3),
    }


def _count_sends() -> list[int]:
    """Counts socket sends (round trips: every send here waits for its reply)."""
    sends = [0]
    real = redis.connection.Connection.send_packed_command

    def counting(conn: Any, command: Any, check_health: bool = True) -> None:
        sends[0] += 1
        real(conn, command, check_health)

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
    return sends


def _hosts(
    url: str, names: list[str], blob_bytes: int, seconds: float, paced: bool, start: float
) -> dict[str, Any]:
    """One process's share of the fleet: each host ticks once a second (paced) or as fast
    as the store answers; returns tick latencies."""
    store = FleetStore(url, FLEET)
    blobs = {h: os.urandom(blob_bytes) for h in names}
    seq = dict.fromkeys(names, 1_000)
    latencies: list[float] = []
    time.sleep(max(0.0, start - time.time()))
    t0 = time.perf_counter()
    k = 0
    while True:
        for i, h in enumerate(names):
            if paced:
                due = t0 + k + i / len(names)
                if due - t0 >= seconds:
                    return {"latencies": latencies}
                time.sleep(max(0.0, due - time.perf_counter()))
            elif time.perf_counter() - t0 >= seconds:
                return {"latencies": latencies}
            seq[h] += 1
            began = time.perf_counter()
            store.tick(h, INFO, evidence=(ROLLOUT, "inc", seq[h], blobs[h]), lease_ms=LEASE_MS)
            latencies.append(time.perf_counter() - began)
        k += 1


def _leader(url: str, host: str, seconds: float, start: float) -> dict[str, Any]:
    """The leader is one of the hosts (it ticks as one too): each second it renews, merges
    every host's evidence, writes the decision and its state."""
    store = FleetStore(url, FLEET)
    merges, ticks, blobs = [], [], 0
    time.sleep(max(0.0, start - time.time()))
    t0 = time.perf_counter()
    while (now := time.perf_counter()) - t0 < seconds:
        lease = store.acquire_or_renew(host, LEASE_MS)
        assert lease is not None
        began = time.perf_counter()
        evidence = store.all_evidence(ROLLOUT)
        merges.append(time.perf_counter() - began)
        blobs = len(evidence)
        store.write_decision(lease.epoch, {"phase": 1, "split_bp": 300})
        store.save_state(lease.epoch, "rollout", b"x" * 2_000)
        ticks.append(time.perf_counter() - now)
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - now)))
    return {"merges": merges, "ticks": ticks, "blobs": blobs}


def _fleet(
    url: str, hosts: list[str], procs: int, blob_bytes: int, seconds: float, paced: bool
) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    start = time.time() + 1.0  # every process has started and made its blobs
    groups = [hosts[i::procs] for i in range(procs)]
    with ProcessPoolExecutor(procs + 1) as pool:
        leader = pool.submit(_leader, url, hosts[0], seconds, start) if paced else None
        futures = [pool.submit(_hosts, url, g, blob_bytes, seconds, paced, start) for g in groups]
        time.sleep(max(0.0, start - time.time()))
        before = _stats(client)
        results = [f.result() for f in futures]
        after = _stats(client)
        lead = leader.result() if leader else None
    latencies = [x for r in results for x in r["latencies"]]
    d = _delta(before, after)
    out: dict[str, Any] = {
        "host_ticks_per_s": round(len(latencies) / d["t"], 1),
        "tick": _ms(latencies),
        "redis_cpu_fraction": round(d["cpu"] / d["t"], 3),
        "redis_commands_per_s": round(d["commands"] / d["t"]),
        "redis_in_mib_per_s": round(d["in"] / d["t"] / 2**20, 2),
        "redis_out_mib_per_s": round(d["out"] / d["t"] / 2**20, 2),
    }
    if after["aof_bytes"]:
        out["aof_rewrites"] = d["aof_rewrites"]
        out["aof_mib_at_end"] = round(after["aof_bytes"] / 2**20, 1)
    if lead is not None:
        out["leader_all_evidence"] = _ms(lead["merges"]) | {"blobs": lead["blobs"]}
        out["leader_tick"] = _ms(lead["ticks"])
    return out


def run(url: str, n_hosts: int, blob_kib: int, seconds: float, procs: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushall()
    base = _stats(client)
    store = FleetStore(url, FLEET)
    hosts = [f"pod-{i:04d}" for i in range(n_hosts)]
    blob_bytes = blob_kib * 1024
    blobs = {h: os.urandom(blob_bytes) for h in hosts}
    for h in hosts:  # warm: every host present, scripts loaded, connection open
        store.tick(h, INFO, evidence=(ROLLOUT, "inc", 1, blobs[h]), lease_ms=LEASE_MS)
    lease = store.acquire_or_renew(hosts[0], LEASE_MS)
    assert lease is not None and store.write_decision(lease.epoch, {"phase": 1, "split_bp": 300})
    memory = _stats(client)["memory"] - base["memory"]

    sends = _count_sends()
    before, latencies = _stats(client), []
    sends[0] = 0
    for i, h in enumerate(hosts):
        began = time.perf_counter()
        store.tick(h, INFO, evidence=(ROLLOUT, "inc", 2 + i, blobs[h]), lease_ms=LEASE_MS)
        latencies.append(time.perf_counter() - began)
    round_trips = sends[0]
    d = _delta(before, _stats(client))
    host_tick = {
        "round_trips": round_trips / n_hosts,
        "commands": (d["commands"] - 1) / n_hosts,
        "request_bytes": round(d["in"] / n_hosts),
        "response_bytes": round(d["out"] / n_hosts),
        "latency": _ms(latencies),
    }

    merges = []
    before = _stats(client)
    sends[0] = 0
    for _ in range(20):
        began = time.perf_counter()
        assert len(store.all_evidence(ROLLOUT)) == n_hosts
        merges.append(time.perf_counter() - began)
    round_trips = sends[0]
    d = _delta(before, _stats(client))
    all_evidence = _ms(merges) | {
        "round_trips": round_trips / 20,
        "response_mib": round(d["out"] / 20 / 2**20, 2),
    }
    store.close()
    return {
        "hosts": n_hosts,
        "blob_kib": blob_kib,
        "memory_mib": round(memory / 2**20, 1),
        "host_tick_serial": host_tick,
        "all_evidence_idle": all_evidence,
        "fleet_paced_1hz": _fleet(url, hosts, procs, blob_bytes, seconds, paced=True),
        "fleet_unpaced": _fleet(url, hosts, procs, blob_bytes, min(seconds, 5), paced=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--blob-kib", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--aof", action="store_true", help="appendonly yes, appendfsync everysec")
    parser.add_argument("--url", help="an existing Redis (FLUSHALL is run on it)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with private_redis(aof=args.aof) if args.url is None else _given(args.url) as url:
        report = run(url, args.hosts, args.blob_kib, args.seconds, args.procs)
        version = redis.Redis.from_url(url).info("server")["redis_version"]
    report |= {"redis": version, "aof": args.aof}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    raise SystemExit(main())
