"""Microbenchmark: one latency record into shared memory vs the usual libraries.

Contenders, each timed in alternating rounds (medians reported, and the ratio to
Rampart's kernel):
- rampart: `router.recording.record_request` (numba, through the slot address) into a
  real mmap'd state file;
- hdrh: `HdrHistogram.record_value` (pure Python);
- prometheus: `prometheus_client.Histogram.observe` with the default buckets.

    python -m bench.bench_record [--rounds 15] [--n 200000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _time(fn: Callable[[Any], object], values: list[int] | list[float]) -> float:
    start = time.perf_counter_ns()
    for v in values:
        fn(v)
    return (time.perf_counter_ns() - start) / len(values)


def _time_kernel(
    record: Callable[[int, int, int, int], None], addr: int, values: list[int]
) -> float:
    # The kernel is called directly in the loop, as the hot path calls it.
    start = time.perf_counter_ns()
    for v in values:
        record(addr, v, 7, 0)
    return (time.perf_counter_ns() - start) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from hdrh.histogram import HdrHistogram
    from prometheus_client import CollectorRegistry, Histogram

    from router import recording, shared_memory

    tmp = tempfile.TemporaryDirectory()
    shm = shared_memory.SharedMemory.open(Path(tmp.name), shared_memory.Geometry(1, 512, 100))
    addr = shm.slot_address(0, 0)
    hist = HdrHistogram(1, 60_000_000, 3)
    prom = Histogram("latency_seconds", "x", registry=CollectorRegistry())
    values = [int(v) for v in np.random.default_rng(1).lognormal(5.5, 1.0, args.n)]
    seconds = [v / 1e6 for v in values]

    record = recording.record_request
    contenders: dict[str, Callable[[], float]] = {
        "rampart": lambda: _time_kernel(record, addr, values),
        "hdrh": lambda: _time(hist.record_value, values),
        "prometheus": lambda: _time(prom.observe, seconds),
    }
    for fn in contenders.values():
        fn()  # warm up (numba compile, caches)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            samples[name].append(contenders[name]())
    medians = {name: statistics.median(s) for name, s in samples.items()}
    result = {
        "ns_per_record_median": medians,
        "ratio_to_rampart": {n: m / medians["rampart"] for n, m in medians.items()},
        "rounds": args.rounds,
        "records_per_round": args.n,
    }
    print("| contender | ns per record (median) | × rampart |")
    print("|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {m:.0f} | {m / medians['rampart']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    shm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
