"""Timing probes for bench.bench_predict_tail, loaded at interpreter start through PYTHONPATH.

Active only when RAMPART_TAIL_PROBE names a directory: then every Python process of
`rampart serve` (the worker and the evaluator it spawns) records, with
`time.perf_counter_ns` (CLOCK_MONOTONIC, the clock bench/oloop.c schedules on):

- every garbage collection (gc.callbacks): generation, start, end, objects collected;
- in the worker, each ticker pass (`Worker.pending_loads` + `Worker.sync`, what
  router/app.py `_tick` runs every `ticker_s`);
- in the evaluator, each tick (`guardrails.process._tick`) with its CPU time, and inside it
  `Evaluator.tick` (the decision) and `router.status.write` (status.json).

The probes wrap functions and append to a list; they change no behaviour. Records go to
DIR/probe-PID.tsv (kind, start ns, end ns, extra) on SIGUSR1 (`rampart serve` ends its
worker by a re-raised SIGTERM, which skips atexit), at exit, and in the evaluator after each
tick (its process ends with os._exit).
"""

from __future__ import annotations

import os


def _install(out: str) -> None:
    import atexit
    import functools
    import gc
    import signal
    import time
    from collections.abc import Callable
    from typing import Any

    clock = time.perf_counter_ns
    events: list[tuple[str, int, int, int]] = []
    path = os.path.join(out, f"probe-{os.getpid()}.tsv")
    gc_began = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_began[0] = clock()
        else:
            events.append((f"gc{info['generation']}", gc_began[0], clock(), info["collected"]))

    def flush() -> None:
        if events:
            try:
                with open(path, "a") as f:
                    f.writelines(f"{k}\t{a}\t{b}\t{x}\n" for k, a, b, x in events)
            except OSError:  # the benchmark is gone (its directory with it)
                pass
            events.clear()

    def timed(kind: str, fn: Callable[..., Any], after: Callable[[], None] | None = None) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cpu, start = time.process_time_ns(), clock()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append((kind, start, clock(), time.process_time_ns() - cpu))
                if after is not None:
                    after()

        return wrapper

    gc.callbacks.append(on_gc)
    atexit.register(flush)
    signal.signal(signal.SIGUSR1, lambda signum, frame: flush())

    from router import status
    from router.worker import Worker

    Worker.pending_loads = timed("worker_pending_loads", Worker.pending_loads)  # type: ignore[method-assign]
    Worker.sync = timed("worker_sync", Worker.sync)  # type: ignore[method-assign]
    status.Publisher.publish = timed("eval_status_write", status.Publisher.publish)  # type: ignore[method-assign]

    import guardrails.process
    from guardrails.evaluator import Evaluator

    Evaluator.tick = timed("eval_decide", Evaluator.tick)  # type: ignore[method-assign]
    guardrails.process._tick = timed("eval_tick", guardrails.process._tick, after=flush)


if os.environ.get("RAMPART_TAIL_PROBE"):
    _install(os.environ["RAMPART_TAIL_PROBE"])
