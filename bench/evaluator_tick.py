"""Benchmark: the evaluator's tick time over slabs full of synthetic traffic.

An in-process `Evaluator` on a fake clock over a real state file whose slabs (4 workers) hold
hours of synthetic traffic (`bench.slab_traffic`) in every segment cell and bucket, with a
rollout walked by the real policy to phase 4 (every guardrail active). Each tick adds one more
second of traffic (untimed), then times what `guardrails.process` does in a tick: the decision
(`tick_seconds`: snapshot.take + measure + checks + decide + act) and the whole tick (plus
publishing status.json). Ticks alternate between a worker reading /status (the dashboard open:
the document is built and written every tick, `full_tick_ms`) and nobody reading (only the
check that nobody asked, `unread_tick_ms`); `snapshot.take` alone is timed for context. For the
default segment space (512 cells) and a 10,000-cell one; targets 2 ms / 20 ms. Run by
`python -m bench.bench_evaluator`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.affinity import pinned
from bench.slab_traffic import SyntheticWorkers
from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator, prepare
from harness.scenario_models import model_path
from router import snapshot
from router import status as status_file
from router.config import Config
from router.control import beat_ns
from router.mailbox import Command
from router.registry import Registry
from router.shared_memory import SharedMemory

TICK_TARGET_MS = {"default": 2.0, "10k": 20.0}
# 25 x 10 x 8 x 5 = 10,000 cells, each dimension's `other` included.
TEN_K_SEGMENTS: dict[str, list[str]] = {
    "publisher_category": [f"pub{i:02d}" for i in range(24)],
    "device_type": [f"dev{i}" for i in range(9)],
    "country_tier": [f"tier{i}" for i in range(7)],
    "creative_type": [f"creative{i}" for i in range(4)],
}
SPACES: dict[str, dict[str, list[str]]] = {"default": {}, "10k": TEN_K_SEGMENTS}
STATS = ("median", "p90", "p99", "max")


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.percentile(np.asarray(seconds) * 1000, [50, 90, 99, 100])
    return {k: round(float(v), 4) for k, v in zip(STATS, ms, strict=True)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class TickRig:
    evaluator: Evaluator
    workers: SyntheticWorkers
    clock: FakeClock
    shm: SharedMemory

    def close(self) -> None:
        self.evaluator.close()
        self.workers.fields.clear()  # views into the mapping must go before it can close
        self.shm.close()


def tick_rig(
    state: Path, segments: Mapping[str, list[str]], *, workers: int = 4, rate: float = 4000.0
) -> TickRig:
    """A rollout in phase 4 over `workers` slabs of synthetic traffic, walked there by the
    production policy: each phase gets its minimum duration of traffic, then one tick."""
    config = Config.from_dict({"serve": {"state_dir": str(state)}, "segments": dict(segments)})
    registry = Registry(config.state_path)
    registry.register(model_path("champion"))
    candidate = registry.register(model_path("challenger_better"))
    registry.close()
    shm = prepare(config)
    clock = FakeClock()
    ev = Evaluator(config, shm, clock=clock, alerter=Alerter(None, None))
    rig = TickRig(ev, SyntheticWorkers(shm, config, workers, rate), clock, shm)
    rig.workers.sync()
    ev.tick()
    ev.apply(Command.START, {"version": str(candidate.version)})
    rig.workers.sync()
    ev.tick()  # every worker has the challenger: phase 1
    for phase in (1, 2, 3):
        _expect_phase(ev, phase)
        seconds = ev.policy.min_s(phase) + 1
        rig.workers.add(seconds)
        clock.now += seconds
        ev.tick()
    _expect_phase(ev, 4)
    rig.workers.add(3600.0)  # an hour into phase 4: evidence of its own
    clock.now += 3600.0
    ev.tick()
    _expect_phase(ev, 4)
    return rig


def _expect_phase(ev: Evaluator, phase: int) -> None:
    r = ev.rollout
    if r is None or not r.state.active or r.phase != phase:
        waiting = [f"{x.name}={x.state.value}" for x in ev.results if x.state.value != "pass"]
        raise RuntimeError(
            f"the synthetic rollout is not running in phase {phase}: "
            f"{r.phase if r else None}, {r.state.value if r else None}, "
            f"{r.reason if r else ''}; not passing: {waiting}"
        )


def tick_time(
    space: str = "default",
    *,
    ticks: int = 300,
    warmup: int = 20,
    workers: int = 4,
    cpu: int | None = None,
) -> dict[str, Any]:
    """Time `ticks` evaluator ticks with a reader and `ticks` without, alternating, of a
    phase-4 rollout over the segment space `space` (a key of SPACES), after `warmup`
    untimed ones (numba, caches)."""
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp, pinned(cpu) as on:
        rig = tick_rig(Path(tmp) / "state", SPACES[space], workers=workers)
        try:
            ev, shm = rig.evaluator, rig.shm
            publisher = status_file.Publisher(ev.config.state_path, shm)
            wanted = shm.slabs["status_wanted_ns"]
            decision, full, unread, publish, take = [], [], [], [], []
            for i in range(warmup + 2 * ticks):
                rig.workers.add(1.0)
                rig.clock.now += 1.0
                read = i % 2 == 0
                # A worker served /status just now (the dashboard polls each second), or
                # nobody has for longer than the lease.
                wanted[0] = beat_ns() if read else 0
                started = time.perf_counter()
                snapshot.take(shm)
                took = time.perf_counter() - started
                started = time.perf_counter()
                ev.tick()  # then what guardrails.process does after it: publish the status
                decided = time.perf_counter()
                written = publisher.publish(lambda: ev.status(rig.clock.now))
                ended = time.perf_counter()
                if written != read:
                    raise RuntimeError(f"status published {written}, wanted {read}")
                if i >= warmup:
                    decision.append(ev.tick_seconds)
                    take.append(took)
                    if read:
                        full.append(ended - started)
                        publish.append(ended - decided)
                    else:
                        unread.append(ended - started)
            _expect_phase(ev, 4)
            target = TICK_TARGET_MS[space]
            decision_ms = summary_ms(decision)
            return {
                "space": space,
                "cells": ev.config.segments.n_cells,
                "values_per_dimension": [len(v) for v in ev.config.segments.values],
                "buckets": ev.config.n_buckets,
                "workers": workers,
                "phase": 4,
                "guardrails": len(ev.results),
                "ticks": ticks,
                "warmup_ticks": warmup,
                "cpu": on,
                "cells_with_clicks_share": rig.workers.clicked_share(),
                "decision_ms": decision_ms,
                "full_tick_ms": summary_ms(full),
                "unread_tick_ms": summary_ms(unread),
                "publish_ms": summary_ms(publish),
                "snapshot_take_ms": summary_ms(take),
                "target_ms": target,
                "ratio_to_target": {k: round(v / target, 4) for k, v in decision_ms.items()},
            }
        finally:
            rig.close()
