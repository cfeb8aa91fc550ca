"""Benchmark: rollback latency end to end, against a real `rampart serve`.

A real `rampart serve` pinned to core 0 with `broken_nan` rolled out as the challenger
(phase 1); a client on core 1 sends /predict at a steady rate, first rows the challenger
answers, then, from the trigger instant, rows it answers with NaN (only request IDs the split
sends to the challenger, so the client sees the flip to within one request interval).
Measured on the client: from sending the first request answered with a fallback (the
guardrail is observable from then on) to receiving the first answer after which every answer
comes from the champion without a fallback. One server, a new candidate per trial, after one
uncounted warm-up trial. Target: one tick + 100 ms (1100 ms); the policy this replaces
allowed 60 s. Run by `python -m bench.bench_evaluator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgpack
import numpy as np
import uvloop

from bench.affinity import pinned
from harness import ground_truth
from harness.scenario_models import RAISE_FEATURE, RAISE_THRESHOLD, model_path
from harness.serve_process import ADMIN_TOKEN, Serve, free_port, pin
from router import hashing
from router.registry import Registry, Status
from router.shared_memory import SharedMemory

ROLLBACK_TARGET_MS = 1100.0  # one 1 s tick + 100 ms
PREVIOUS_POLICY_MS = 60_000.0
CLIENT_CORE = 1

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
