"""Who had the server's core while /predict stalled: `perf sched` on core 0 during an
open-loop run, read back with `perf sched timehist`, laid against the client's stall
episodes (bench.bench_predict_tail).

`perf sched record -k CLOCK_MONOTONIC` stamps every context switch with the clock oloop
schedules on, so a stall episode [start, end] can be filled with what ran on core 0 in it:
the worker's thread, its other threads, the evaluator, idle, or any other process.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.serve_process import pin

KERNEL_THREADS = (
    "kworker",
    "ksoftirqd",
    "rcu",
    "migration",
    "kdamond",
    "jbd2",
    "irq/",
    "kswapd",
    "khugepaged",
    "kcompactd",
    "cpuhp",
)
SERVER_CPU = 0
CLIENT_CORE = 1
LINE = re.compile(
    r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+[\d.]+\s+[\d.]+\s+([\d.]+)"
)


def available() -> bool:
    return shutil.which("perf") is not None


def record(out: Path) -> subprocess.Popen[bytes]:
    """`perf sched record` on the server's core until stopped (SIGINT), perf on the
    client's core."""
    cmd = ["perf", "sched", "record", "-k", "CLOCK_MONOTONIC", "-C", str(SERVER_CPU)]
    return subprocess.Popen(
        [*pin(CLIENT_CORE), *cmd, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    proc.wait(60)


def segments(data: Path) -> list[tuple[int, int, int, str]]:
    """(start ns, end ns, tid, command) of every stretch a task ran on the core."""
    text = subprocess.run(
        ["perf", "sched", "timehist", "-i", str(data)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        end = round(float(m.group(1)) * 1e9)
        run = round(float(m.group(6)) * 1e6)
        out.append((end - run, end, int(m.group(4)), m.group(3).strip()))
    return out


def who(
    tid: int, command: str, worker_tids: set[int], evaluator_tids: set[int], worker: int
) -> str:
    if tid == worker:
        return "worker (event loop)"
    if tid in worker_tids:
        return "worker (other threads)"
    if tid in evaluator_tids:
        return "evaluator"
    if tid == 0 or command.startswith("<idle>"):
        return "idle"
    if command.startswith(KERNEL_THREADS):
        return "kernel threads"
    if command.startswith("perf"):
        return "perf"
    return "other processes"


def during_episodes(
    segs: list[tuple[int, int, int, str]],
    episodes: list[dict[str, Any]],
    worker: int,
    worker_tids: set[int],
    evaluator_tids: set[int],
) -> dict[str, Any]:
    """Core-0 time inside the stall episodes, by who ran, weighted by the slow requests of
    each episode; and the episodes each one dominated (ran more than half of)."""
    segs = sorted(segs)
    starts = [s for s, _, _, _ in segs]
    time_ns: collections.Counter[str] = collections.Counter()
    weighted: collections.Counter[str] = collections.Counter()
    dominated: collections.Counter[str] = collections.Counter()
    import bisect

    for e in episodes:
        lo = bisect.bisect_left(starts, e["start"] - 50_000_000)
        share: collections.Counter[str] = collections.Counter()
        for s, t, tid, cmd in segs[lo:]:
            if s > e["end"]:
                break
            overlap = min(t, e["end"]) - max(s, e["start"])
            if overlap > 0:
                share[who(tid, cmd, worker_tids, evaluator_tids, worker)] += overlap
        total = sum(share.values()) or 1
        for k, v in share.items():
            time_ns[k] += v
            weighted[k] += e["requests"] * v / total
        if share:
            top, v = share.most_common(1)[0]
            if v > total / 2:
                dominated[top] += 1
    all_time = sum(time_ns.values()) or 1
    all_weight = sum(weighted.values()) or 1
    return {
        k: {
            "ms_in_episodes": round(v / 1e6, 2),
            "share_of_episode_time": round(v / all_time, 3),
            "share_of_slow_requests": round(weighted[k] / all_weight, 3),
            "episodes_dominated": dominated[k],
        }
        for k, v in time_ns.most_common()
    }


def totals(
    segs: list[tuple[int, int, int, str]],
    t0: int,
    t1: int,
    worker: int,
    worker_tids: set[int],
    evaluator_tids: set[int],
) -> dict[str, float]:
    """Core-0 time (ms) over the whole run, by who ran."""
    out: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    for s, t, tid, cmd in segs:
        overlap = min(t, t1) - max(s, t0)
        if overlap > 0:
            k = who(tid, cmd, worker_tids, evaluator_tids, worker)
            out[k] += overlap
            if k in ("other processes", "kernel threads"):
                others[f"{k}: {cmd}"] += overlap
    result = {k: round(v / 1e6, 1) for k, v in out.most_common()}
    result["top commands"] = {k: round(v / 1e6, 1) for k, v in others.most_common(8)}  # type: ignore[assignment]
    return result
