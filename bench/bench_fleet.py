"""Benchmark: the fleet leader's tick over N hosts' evidence, and what one host publishes.

Synthetic publishers write busy hosts' cumulative evidence (every segment cell, 400 latency
buckets, 200 prediction bins in use, counts in the millions) for a running rollout into a
private `redis-server`; the leader is the production `Evaluator` wired to the store
exactly as `guardrails.fleet` wires it. Each round every host republishes (its counts
grow), then the leader ticks; reported: the merge alone (`FleetServing.take`), the whole
decision tick, and publishing the status, as medians and p99 over the rounds; the bytes
one host publishes per tick and the Redis commands and round trips of a host's and the
leader's tick (counted at the socket).

    python -m bench.bench_fleet [--hosts 100] [--rounds 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import redis

from guardrails import fleet_evidence
from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator
from guardrails.fleet_evidence import HostEvidence
from guardrails.fleet_leader import FleetLog, FleetMailbox, FleetRegistry, FleetServing
from guardrails.fleet_store import FleetStore
from guardrails.rollouts import Rollout, RolloutState
from harness.redis_process import private_redis
from router import hdr, layout
from router.config import Config

FLEET = "bench"
ROLLOUT = "r-bench"


def busy_host(rng: np.random.Generator, n_cells: int, n_buckets: int) -> HostEvidence:
    """A host ~4 days into a healthy rollout at 20%: every cell and many latency and
    prediction bins in use, counts in the millions."""
    slots = []
    champion = rng.integers(10**5, 10**6, n_cells)
    for requests in (champion, champion // 4):  # exactly the 20% split: no sample-ratio alarm
        t = fleet_evidence.empty_totals(n_cells, n_buckets)
        t.seg_requests[:, 0] = requests
        t.counters[layout.Counter.REQUESTS] = t.counters[layout.Counter.CANDIDATES] = requests.sum()
        latency_us = rng.lognormal(6.0, 0.6, 4000).astype(int) + 50
        index = np.array([hdr.counts_index(int(v)) for v in latency_us])
        np.add.at(t.latency, index, requests.sum() // 4000)
        t.pred_hist[:200] = rng.integers(1, 10**6, 200)
        t.seg_events[:, 0] = requests
        t.seg_events[:, 1] = requests // 50
        t.seg_pred_sum[:] = requests * 0.02
        t.bucket_events[:30, 0] = rng.integers(10**5, 10**6, 30)
        t.bucket_events[:30, 1] = t.bucket_events[:30, 0] // 50
        t.bucket_pred_sum[:30] = t.bucket_events[:30, 0] * 0.02
        slots.append(t)
    rejects = np.zeros(len(layout.REJECT_REASONS), dtype=np.int64)
    return HostEvidence((1, 2), (slots[0], slots[1]), rejects)


def _counting(client: redis.Redis) -> dict[str, int]:
    """Count round trips (socket sends) and commands on every connection of `client`."""
    counts = {"sends": 0, "commands": 0}
    conn_class = client.connection_pool.connection_class
    real_one, real_many = conn_class.send_packed_command, conn_class.send_command

    def send_packed(self: Any, command: Any, check_health: bool = True) -> None:
        counts["sends"] += 1
        counts["commands"] += len(command) if isinstance(command, list) else 1
        real_one(self, command, check_health)

    conn_class.send_packed_command = send_packed
    del real_many
    return counts


def run(hosts: int, rounds: int) -> dict[str, Any]:
    config = Config.from_dict({"rollout": {"time_scale": 1.0}})
    n_cells, n_buckets = config.segments.n_cells, config.n_buckets
    rng = np.random.default_rng(7)
    evidence = [busy_host(rng, n_cells, n_buckets) for _ in range(hosts)]
    blob_bytes = [len(fleet_evidence.encode(e, n_cells, n_buckets)) for e in evidence]
    with private_redis() as url:
        store = FleetStore(url, FLEET)
        for version, status in ((1, "champion"), (2, "challenger")):
            record = {"name": "bench", "features": ["f0"], "version": version, "status": status}
            store.put_model(record, f"model {version}".encode())
        lease = store.acquire_or_renew("leader", 60_000)
        assert lease is not None
        epoch = lease.epoch
        decision = {
            "rollout_id": ROLLOUT,
            "split_bp": 2000,
            "champion_slot": 0,
            "has_challenger": True,
            "slot_model": [1, 2],
            "hash_seed": 1,
        }
        serving = FleetServing(
            store, epoch, decision, n_cells=n_cells, n_buckets=n_buckets, live_s=3600.0
        )
        serving.write()
        journal = FleetLog(store, epoch, serving)
        now = time.time()
        rollout = Rollout(
            ROLLOUT, 2, 1, RolloutState.RUNNING, 3, now - 4 * 86400, now - 86400,
            baseline=fleet_evidence.empty_totals(n_cells, n_buckets),
        )  # fmt: skip
        journal.save(rollout, with_baseline=True)
        leader = Evaluator(
            config,
            serving=serving,
            registry=FleetRegistry(store, epoch),
            mailbox=FleetMailbox(store, epoch),
            journal=journal,
            alerter=Alerter(None, None),
        )
        publishers = [FleetStore(url, FLEET) for _ in range(min(hosts, 8))]
        take_ms, tick_ms, status_ms = [], [], []
        seq = 0
        for r in range(rounds + 3):
            seq += 1
            for i, e in enumerate(evidence):
                e.slots[1].seg_events[0] += (100, 2)  # a busy host's counts grow
                blob = fleet_evidence.encode(e, n_cells, n_buckets)
                publishers[i % len(publishers)].publish_evidence(
                    ROLLOUT, f"host-{i}", "inc", seq, blob
                )
            t0 = time.perf_counter()
            serving.take()
            t1 = time.perf_counter()
            leader.tick()
            t2 = time.perf_counter()
            doc = leader.status(time.time())
            store.save_state(epoch, "status", json.dumps(doc).encode())
            t3 = time.perf_counter()
            if r >= 3:  # the first rounds compile and warm up
                take_ms.append((t1 - t0) * 1e3)
                tick_ms.append((t2 - t1) * 1e3)
                status_ms.append((t3 - t2) * 1e3)
        ro = leader.rollout
        assert ro is not None and ro.state.active, f"the rollout ended: {ro and ro.reason}"
        host_store = FleetStore(url, FLEET)
        counts = _counting(host_store._redis)
        for extra in (1, 2):  # the first tick of a connection loads the scripts
            counts.update(sends=0, commands=0)
            blob = fleet_evidence.encode(evidence[0], n_cells, n_buckets)
            host_store.tick(
                "host-0",
                {"loaded": [1, 2], "breach": None},
                evidence=(ROLLOUT, "inc", seq + extra, blob),
                lease_ms=3000,
            )
        host = dict(counts)
        leader_counts = _counting(store._redis)
        leader_counts.update(sends=0, commands=0)
        leader.tick()
        store.hosts()
        store.leader()
        store.save_state(epoch, "status", b"x")
        leader_rt = dict(leader_counts)
    return {
        "hosts": hosts,
        "rounds": rounds,
        "blob_bytes_median": statistics.median(blob_bytes),
        "blob_bytes_max": max(blob_bytes),
        "host_tick_round_trips": host["sends"],
        "leader_extra_round_trips": leader_rt["sends"],
        "take_ms": _summary(take_ms),
        "decide_ms": _summary(tick_ms),
        "status_ms": _summary(status_ms),
        # The decision tick takes its own snapshot: the leader's whole tick is decide + status.
        "leader_tick_ms": _summary([a + b for a, b in zip(tick_ms, status_ms, strict=True)]),
    }


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"median": round(statistics.median(ordered), 2), "p99": round(p99, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    out = run(args.hosts, args.rounds)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
