"""The evaluator's share of the workers' CPU budget.

A sidecar's evaluator runs beside its workers, often on the same core, and its tick is a
burst of one to a few ms once a second. Two things keep that burst out of /predict's tail:
- `yield_to_workers`, once at start: under SCHED_BATCH the evaluator's own wake-up does not
  preempt a running worker, and at nice 5 a busy worker gets the larger share of the core;
  an idle core still runs the tick at once.
- `give_way`, between the steps of a tick: a worker woken by a request meanwhile runs at
  the next step rather than at the end of the evaluator's slice (1.4 ms on a 2-CPU
  machine). Measured in one run against the revision before it (bench/bench_ab.py): phase
  4's open-loop p99 0.87 against 1.20 ms.
"""

from __future__ import annotations

import contextlib
import os

EVALUATOR_NICE = 5


def yield_to_workers() -> None:
    """SCHED_BATCH (Linux) and at least nice 5, for this process and what it starts."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    current = os.nice(0)
    if current < EVALUATOR_NICE:
        os.nice(EVALUATOR_NICE - current)


def give_way() -> None:
    """Between the steps of a tick: a worker woken by a request meanwhile runs first."""
    os.sched_yield()
