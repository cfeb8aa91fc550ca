"""Benchmark: the evaluator's tick time, and rollback latency end to end.

1. Tick time. An in-process `Evaluator` on a fake clock over a real state file whose
   slabs (4 workers) hold hours of synthetic traffic in every segment cell and bucket,
   with a rollout walked by the real policy to phase 4 (every guardrail active). Each
   tick adds one more second of traffic (untimed), then times `Evaluator.tick()`: the
   decision (`tick_seconds`: snapshot.take + measure + checks + decide + act) and the
   full tick (plus publishing status.json); `snapshot.take` alone is timed for context.
   For the default segment space (512 cells) and a 10,000-cell one; targets 2 ms / 20 ms.
2. Rollback latency. A real `rampart serve` pinned to core 0 with `broken_nan` rolled
   out as the challenger (phase 1); a client on core 1 sends /predict at a steady rate,
   first rows the challenger answers, then, from the trigger instant, rows it answers
   with NaN (only request IDs the split sends to the challenger, so the client sees the
   flip to within one request interval). Measured on the client: from sending the first
   request answered with a fallback (the guardrail is observable from then on) to
   receiving the first answer after which every answer comes from the champion without
   a fallback. One server, a new candidate per trial, after one uncounted warm-up trial.
   Target: one tick + 100 ms (1100 ms); the policy this replaces allowed 60 s.

    python -m bench.bench_evaluator [--ticks 300] [--trials 10] [--quick]
        [--only tick|rollback] [--out bench/results/evaluator.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgpack
import numpy as np
import uvloop

from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator, prepare
from harness import ground_truth
from harness.scenario_models import RAISE_FEATURE, RAISE_THRESHOLD, model_path
from harness.serve_process import ADMIN_TOKEN, Serve, free_port, pin
from router import control, hashing, hdr, layout, snapshot
from router.config import Config
from router.layout import Counter
from router.mailbox import Command
from router.registry import Registry, Status
from router.shared_memory import SharedMemory

TICK_TARGET_MS = {"default": 2.0, "10k": 20.0}
ROLLBACK_TARGET_MS = 1100.0  # one 1 s tick + 100 ms
PREVIOUS_POLICY_MS = 60_000.0
CLIENT_CORE = 1
# 25 x 10 x 8 x 5 = 10,000 cells, each dimension's `other` included.
TEN_K_SEGMENTS: dict[str, list[str]] = {
    "publisher_category": [f"pub{i:02d}" for i in range(24)],
    "device_type": [f"dev{i}" for i in range(9)],
    "country_tier": [f"tier{i}" for i in range(7)],
    "creative_type": [f"creative{i}" for i in range(4)],
}
SPACES: dict[str, dict[str, list[str]]] = {"default": {}, "10k": TEN_K_SEGMENTS}
STATS = ("median", "p90", "p99", "max")


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[int | None]:
    """This process on one CPU for the block, its affinity restored after; None, or a
    CPU it may not use, leaves it as it is."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    if cpu not in before:
        yield None
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.percentile(np.asarray(seconds) * 1000, [50, 90, 99, 100])
    return {k: round(float(v), 4) for k, v in zip(STATS, ms, strict=True)}


# --- 1. tick time -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class SyntheticWorkers:
    """Stands in for `n` HTTP workers: stretches of traffic at `rate` requests/s (split as
    the control word says) added to each worker's slab with NumPy, into the same fields
    the workers' numba kernels write. Both arms are healthy and calibrated; the challenger's
    CTR is `lift` times the champion's in every cell, so no guardrail breaks."""

    ERROR_RATE = 2e-4
    CANDIDATES = 5

    def __init__(
        self, shm: SharedMemory, config: Config, n: int, rate: float, lift: float = 1.03
    ) -> None:
        self.shm, self.n, self.rate, self.lift = shm, n, rate, lift
        self.rng = np.random.default_rng(11)
        rng = self.rng
        slots = shm.slabs["slots"]
        self.fields = {name: slots[name] for name in snapshot._SLOT_FIELDS}
        # A cell's share of traffic and its CTR: products of per-dimension factors.
        shares = [rng.uniform(0.75, 1.25, len(v)) for v in config.segments.values]
        self.cell_share = reduce(np.multiply.outer, [s / s.sum() for s in shares]).ravel()
        lifts = [rng.uniform(0.8, 1.2, len(v)) for v in config.segments.values]
        factor = reduce(np.multiply.outer, lifts).ravel()
        self.cell_ctr = 0.02 * factor / float(self.cell_share @ factor)
        # Predictions: Beta(2, 90) with a little uniform mass, so every bin sees some.
        centres = (np.arange(layout.N_PRED_BINS) + 0.5) / layout.N_PRED_BINS
        density = centres * (1 - centres) ** 89
        self.pred_p = 0.999 * density / density.sum() + 0.001 / layout.N_PRED_BINS
        bucket_of = np.minimum(
            (centres / config.bucket_width).astype(np.int64), config.n_buckets - 1
        )
        self.bucket_p = np.bincount(bucket_of, self.pred_p, config.n_buckets)
        shown = np.bincount(bucket_of, self.pred_p * centres, config.n_buckets)
        self.bucket_ctr = shown / self.bucket_p  # the mean prediction shown in each bucket
        # Latency: log-normal around 0.4 ms (p99 ~1.3 ms), as HDR bucket indices.
        sample = rng.lognormal(np.log(400.0), 0.5, 20_000).astype(np.int64) + 1
        index = np.array([hdr.counts_index(int(v)) for v in sample])
        self.lat_index, counts = np.unique(index, return_counts=True)
        self.lat_p = counts / counts.sum()

    def sync(self) -> None:
        """What every worker's ticker does: acknowledge the slots (zeroing new ones), beat."""
        slabs, ctrl = self.shm.slabs, self.shm.control
        for w in range(self.n):
            for s in range(layout.N_SLOTS):
                if int(slabs["slot_seq"][w, s]) != int(ctrl["slot_seq"][s]):
                    for f in self.fields.values():
                        f[w, s] = 0
                    slabs["slot_seq"][w, s] = ctrl["slot_seq"][s]
            slabs["heartbeat_ns"][w] = time.time_ns()

    def clicked_share(self) -> float:
        """The share of (worker, slot, cell) entries with at least one click."""
        return round(float((self.fields["seg_events"][: self.n, ..., 1] > 0).mean()), 4)

    def add(self, seconds: float) -> None:
        split, champion, has_challenger, _ = control.unpack(self.shm.control_word())
        total = round(self.rate * seconds)
        challenger = round(total * split / layout.BASIS_POINTS) if has_challenger else 0
        for slot, n, lift in ((champion, total - challenger, 1.0),
                              (1 - champion, challenger, self.lift)):  # fmt: skip
            for w in range(self.n):
                self._record(w, slot, n // self.n + (w < n % self.n), lift)
        self.sync()

    def _record(self, w: int, slot: int, n: int, lift: float) -> None:
        if n <= 0:
            return
        rng, f = self.rng, self.fields
        requests = rng.multinomial(n, self.cell_share)
        errors = rng.binomial(requests, self.ERROR_RATE)
        ctr = self.cell_ctr * lift
        counters = f["counters"][w, slot]
        counters[Counter.REQUESTS] += n
        counters[Counter.CANDIDATES] += n * self.CANDIDATES
        counters[Counter.ERR_RAISED] += int(errors.sum())
        f["latency"][w, slot][self.lat_index] += rng.multinomial(n, self.lat_p)
        f["pred_hist"][w, slot] += rng.multinomial(n * self.CANDIDATES, self.pred_p)
        f["seg_requests"][w, slot][:, 0] += requests
        f["seg_requests"][w, slot][:, 1] += errors
        # One impression per answered request, clicked with the cell's CTR.
        f["seg_events"][w, slot][:, 0] += requests
        f["seg_events"][w, slot][:, 1] += rng.binomial(requests, np.minimum(ctr, 1.0))
        f["seg_pred_sum"][w, slot] += requests * ctr
        shown = rng.multinomial(n, self.bucket_p)
        f["bucket_events"][w, slot][:, 0] += shown
        f["bucket_events"][w, slot][:, 1] += rng.binomial(shown, self.bucket_ctr)
        f["bucket_pred_sum"][w, slot] += shown * self.bucket_ctr


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
    """Time `ticks` evaluator ticks of a phase-4 rollout over the segment space `space`
    (a key of SPACES), after `warmup` untimed ones (numba, caches)."""
    with tempfile.TemporaryDirectory(prefix="rampart-bench-") as tmp, pinned(cpu) as on:
        rig = tick_rig(Path(tmp) / "state", SPACES[space], workers=workers)
        try:
            ev, shm = rig.evaluator, rig.shm
            decision, full, take = [], [], []
            for i in range(warmup + ticks):
                rig.workers.add(1.0)
                rig.clock.now += 1.0
                started = time.perf_counter()
                snapshot.take(shm)
                took = time.perf_counter() - started
                started = time.perf_counter()
                ev.tick()
                elapsed = time.perf_counter() - started
                if i >= warmup:
                    decision.append(ev.tick_seconds)
                    full.append(elapsed)
                    take.append(took)
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
                "snapshot_take_ms": summary_ms(take),
                "target_ms": target,
                "ratio_to_target": {k: round(v / target, 4) for k, v in decision_ms.items()},
            }
        finally:
            rig.close()


# --- 2. rollback latency end to end -------------------------------------------------------------

E2E_CONFIG = """
[serve]
workers = 1
evaluator_cpu = {evaluator_cpu}
"""
# Production policy and guardrail minimums on purpose: phase 1 starts as soon as the worker
# has loaded the challenger, whatever `time_scale`, and with the production durations and
# minimums nothing ends phase 1 early (no advance, no maximum duration, no check judging on
# a few seconds of healthy traffic). The trigger's guardrail, predictions_in_range, needs no
# minimum: one NaN fails it.


@dataclass(frozen=True)
class Answer:
    sent_ns: int
    received_ns: int
    bad_rows: bool
    arm: str
    fallback: str | None

    @property
    def clean(self) -> bool:
        return self.arm == "champion" and self.fallback is None


def _bodies(rows: np.ndarray, segments: dict[str, np.ndarray], ids: Sequence[str]) -> list[bytes]:
    listed = rows.tolist()
    return [
        msgpack.packb(
            {
                "request_id": rid,
                "features": listed[j % len(listed)],
                "segment": {d: str(v[j % len(listed)]) for d, v in segments.items()},
            }
        )
        for j, rid in enumerate(ids)
    ]


def _rows(rng: np.random.Generator, n: int, features: Sequence[str], bad: bool) -> np.ndarray:
    """`n` requests of 5 candidates in the champion's feature order; the candidates of a
    request share RAISE_FEATURE, over RAISE_THRESHOLD (NaN from broken_nan) iff `bad`."""
    x = ground_truth.sample_requests(rng, n, 5)
    col = ground_truth.COLUMN[RAISE_FEATURE]
    x[..., col] = RAISE_THRESHOLD + 1.0 if bad else np.minimum(x[..., col], RAISE_THRESHOLD - 0.1)
    return np.asarray(x[:, :, ground_truth.feature_columns(features)])


@dataclass(frozen=True)
class Drive:
    answers: list[Answer]
    trigger_ns: int  # perf_counter_ns of the trigger instant
    wall_offset_s: float  # time.time() - perf_counter_ns() / 1e9, to read server timestamps

    def wall(self, ns: int) -> float:
        return self.wall_offset_s + ns / 1e9


async def _drive(
    port: int,
    healthy: list[bytes],
    bad: list[bytes],
    rate: float,
    healthy_s: float,
    timeout_s: float,
    settle_s: float = 0.5,
) -> Drive:
    """Open loop at `rate`: `healthy` requests for `healthy_s`, then `bad` ones until every
    answer to a bad one has been clean for `settle_s` (or for `timeout_s`). Times are taken
    when an answer is read: the client's own cost is microseconds against a 1 s tick."""
    url = f"http://127.0.0.1:{port}/predict"
    headers = {"Content-Type": "application/msgpack"}
    answers: list[Answer] = []
    tasks: set[asyncio.Task[None]] = set()
    period = 1e9 / rate
    wall_offset = time.time() - time.perf_counter_ns() / 1e9
    t0 = time.perf_counter_ns()
    trigger = t0 + int(healthy_s * 1e9)
    deadline = trigger + int(timeout_s * 1e9)
    clean_since: int | None = None
    queues = {False: iter(healthy), True: iter(bad)}

    async def ask(http: aiohttp.ClientSession, body: bytes, sent: int, is_bad: bool) -> None:
        nonlocal clean_since
        try:
            async with http.post(url, data=body, headers=headers) as r:
                status, content = r.status, await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            status, content = 0, b""
        now = time.perf_counter_ns()
        answer = msgpack.unpackb(content) if status == 200 else {}
        a = Answer(sent, now, is_bad, str(answer.get("arm")), answer.get("fallback"))
        answers.append(a)
        if not a.clean:
            clean_since = None
        elif a.bad_rows and clean_since is None:
            clean_since = now

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        i = 0
        while True:
            due = t0 + int(i * period)
            now = time.perf_counter_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                now = time.perf_counter_ns()
            if now >= deadline or (clean_since is not None and now - clean_since > settle_s * 1e9):
                break
            is_bad = due >= trigger
            request = next(queues[is_bad], None)
            if request is None:
                raise RuntimeError("ran out of prepared requests")
            task = asyncio.create_task(ask(http, request, now, is_bad))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for task in tasks:
            task.cancel()
    return Drive(answers, trigger, wall_offset)


def _measure(drive: Drive) -> dict[str, Any]:
    """From sending the first request answered with a fallback to receiving the first clean
    answer after the last answer that was not clean."""
    answers = drive.answers
    flagged = [a for a in answers if a.fallback is not None and a.bad_rows]
    if not flagged:
        return {"valid": False, "why": "no bad request was answered by the challenger"}
    first = min(flagged, key=lambda a: a.sent_ns)
    after = [a for a in answers if a.received_ns >= first.sent_ns]
    last_dirty = max((a.received_ns for a in after if not a.clean), default=first.sent_ns)
    ends = sorted(
        a.received_ns for a in after if a.clean and a.bad_rows and a.received_ns > last_dirty
    )
    if not ends:
        return {"valid": False, "why": "the challenger kept answering until the timeout"}
    before = [a for a in answers if not a.bad_rows and a.received_ns < drive.trigger_ns]
    return {
        "valid": True,
        "latency_ms": round((ends[0] - first.sent_ns) / 1e6, 2),
        "resolution_ms": round((ends[0] - last_dirty) / 1e6, 2),
        "first_fallback_after_trigger_ms": round((first.sent_ns - drive.trigger_ns) / 1e6, 2),
        "first_fallback_wall": drive.wall(first.sent_ns),
        "answers_not_clean": sum(not a.clean for a in after),
        "challenger_answers_before_trigger": sum(a.arm == "challenger" for a in before),
        "answers": len(answers),
    }


def _wait_status(
    serve: Serve, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            status = serve.status()
            if done(status):
                return status
        time.sleep(0.05)
    raise TimeoutError(f"rampart serve did not get there in {timeout_s} s: {status.get('next')}")


def _challenger_ids(prefix: str, n: int, split_bp: int, seed: int) -> list[str]:
    out: list[str] = []
    j = 0
    while len(out) < n:
        rid = f"{prefix}{j}"
        j += 1
        if hashing.is_challenger(rid, split_bp, seed):
            out.append(rid)
    return out


def _split_in_force(status: dict[str, Any]) -> bool:
    """Phase 1 is running and the answering worker routes by its split."""
    split = status.get("split_bp", 0)
    return status.get("state") == "running" and split > 0 and status["effective_split_bp"] == split


def _trial(
    serve: Serve,
    state: Path,
    port: int,
    index: int,
    rate: float,
    healthy_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """One rollout of a new broken_nan candidate: phase 1, healthy traffic, the trigger."""
    registry = Registry(state)
    features = list(registry.with_status(Status.CHAMPION)[-1].features)
    version = registry.register(model_path("broken_nan")).version
    registry.close()
    serve.admin("start", {"version": str(version)})
    split = int(_wait_status(serve, _split_in_force, 60)["split_bp"])
    shm = SharedMemory.attach(state)
    seed = int(shm.control["hash_seed"])
    shm.close()
    rng = np.random.default_rng(index)
    healthy_ids = [f"bench-{index}-{j}" for j in range(int(rate * healthy_s) + 16)]
    # After the trigger, only IDs the split sends to the challenger: the client sees the
    # flip to within one request interval, not within the gap between challenger hits.
    bad_ids = _challenger_ids(f"bench-{index}-bad-", int(rate * (timeout_s + 1)), split, seed)
    segments = ground_truth.segments(ground_truth.sample_requests(rng, 256, 1)[:, 0, :])
    healthy = _bodies(_rows(rng, 256, features, False), segments, healthy_ids)
    bad = _bodies(_rows(rng, 256, features, True), segments, bad_ids)
    drive = uvloop.run(_drive(port, healthy, bad, rate, healthy_s, timeout_s))
    result = _measure(drive)
    final = _wait_status(serve, lambda st: not st.get("rollout"), 30)
    ends = [e for e in final.get("events") or [] if e["kind"] in ("rolled_back", "stopped")]
    result.update(
        version=version,
        split_bp=split,
        outcome=(final.get("last_rollout") or {}).get("state"),
        guardrail=ends[-1].get("guardrail") if ends else None,
    )
    sent_wall = result.pop("first_fallback_wall", None)
    if ends and sent_wall is not None:
        # The rollback event's time, taken right after the flip (the evaluator's wall clock).
        result["server_flip_ms"] = round((ends[-1]["t"] - sent_wall) * 1000, 2)
    if result["valid"] and result["guardrail"] != "predictions_in_range":
        result.update(valid=False, why=f"rolled back by {result['guardrail']}, not the trigger")
    return result


def rollback_latency(
    *,
    trials: int = 10,
    warmup_trials: int = 1,
    rate: float = 500.0,
    healthy_s: float = 2.0,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """`trials` rollouts of broken_nan on one `rampart serve`, a new candidate each, after
    `warmup_trials` uncounted ones: the evaluator loads its numba kernels on its first tick
    with a running rollout, which makes that tick slow (reported under `warmup_runs`)."""
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rampart-bench-")))
        state = root / "state"
        registry = Registry(state)
        features = list(registry.register(model_path("champion")).features)
        registry.close()
        config = root / "bench.toml"
        config.write_text(E2E_CONFIG.format(evaluator_cpu=CLIENT_CORE if pin(0) else -1))
        env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
        for name in ("RAMPART_SLACK_WEBHOOK", "RAMPART_ALERT_WEBHOOK"):
            env.pop(name, None)  # a benchmark's rollbacks are nobody's incident
        port = free_port()
        serve = Serve(state, config, port, env)
        stack.callback(serve.stop)
        serve.start()
        stack.enter_context(pinned(CLIENT_CORE if pin(CLIENT_CORE) else None))
        _warm_up(port, features)
        runs = [
            _trial(serve, state, port, i, rate, healthy_s, timeout_s)
            for i in range(warmup_trials + trials)
        ]
    warm, runs = runs[:warmup_trials], runs[warmup_trials:]
    valid = [r["latency_ms"] for r in runs if r["valid"]]
    out: dict[str, Any] = {
        "rate_rps": rate,
        "healthy_s": healthy_s,
        "trials": trials,
        "valid_trials": len(valid),
        "target_ms": ROLLBACK_TARGET_MS,
        "previous_policy_ms": PREVIOUS_POLICY_MS,
        "runs": runs,
        "warmup_runs": warm,
    }
    if valid:
        out["latency_ms"] = {"median": statistics.median(valid), "max": max(valid)}
        out["ratio_to_target"] = {
            k: round(v / ROLLBACK_TARGET_MS, 4) for k, v in out["latency_ms"].items()
        }
    return out


def _warm_up(port: int, features: list[str]) -> None:
    """The first answers pay for lazy imports and JIT: keep them out of the trials."""
    rows = _rows(np.random.default_rng(0), 50, features, False)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i, row in enumerate(rows.tolist()):
            body = msgpack.packb({"request_id": f"warm-{i}", "features": row})
            client.post("/predict", content=body, headers={"content-type": "application/msgpack"})


# --- CLI ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ticks", type=int, help="timed ticks per segment space (300)")
    parser.add_argument("--trials", type=int, help="rollback trials (10)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 20 ticks, 1 short rollback trial"
    )
    parser.add_argument("--only", choices=("tick", "rollback"))
    parser.add_argument("--rate", type=float, default=500.0, help="client requests/s (500)")
    parser.add_argument("--out", default="bench/results/evaluator.json")
    args = parser.parse_args(argv)
    if args.ticks is None:
        args.ticks = 20 if args.quick else 300
    if args.trials is None:
        args.trials = 1 if args.quick else 10
    args.warmup = 5 if args.quick else 20
    args.healthy_s = 1.0 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"quick": args.quick}
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if args.only in (None, "tick"):
        report["tick"] = [
            tick_time(space, ticks=args.ticks, warmup=args.warmup, cpu=cpu) for space in SPACES
        ]
    if args.only in (None, "rollback"):
        report["rollback"] = rollback_latency(
            trials=args.trials, rate=args.rate, healthy_s=args.healthy_s
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary_text(report))
    return 0


def summary_text(report: dict[str, Any]) -> str:
    lines = []
    if report.get("quick"):
        lines.append("SMOKE MODE (--quick): not figures to publish")
    for t in report.get("tick", []):
        d, f, s = t["decision_ms"], t["full_tick_ms"], t["snapshot_take_ms"]
        lines.append(
            f"tick, {t['cells']} cells, {t['workers']} slabs, phase 4, {t['ticks']} ticks: "
            f"decision median {d['median']:.3f} / p90 {d['p90']:.3f} / p99 {d['p99']:.3f} / "
            f"max {d['max']:.3f} ms (target {t['target_ms']:g} ms, p99 "
            f"{t['ratio_to_target']['p99']:.2f}x); with status.json median {f['median']:.3f} / "
            f"p99 {f['p99']:.3f} ms; snapshot.take alone median {s['median']:.3f} ms"
        )
    r = report.get("rollback")
    if r:
        head = (
            f"rollback end to end, {r['valid_trials']}/{r['trials']} trials "
            f"at {r['rate_rps']:g} req/s: "
        )
        if "latency_ms" in r:
            lat = r["latency_ms"]
            lines.append(
                head + f"median {lat['median']:.0f} ms, max {lat['max']:.0f} ms "
                f"(target {r['target_ms']:.0f} ms; the previous policy allowed "
                f"{r['previous_policy_ms'] / 1000:.0f} s)"
            )
        else:
            lines.append(
                head + "no valid trial: " + "; ".join(str(x.get("why")) for x in r["runs"])
            )
        for w in r["warmup_runs"]:
            seen = f"{w['latency_ms']:.0f} ms" if w["valid"] else f"invalid, {w['why']}"
            lines.append(f"  uncounted warm-up trial (the evaluator's first rollout): {seen}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
