"""The challenger's run deadline, on real onnxruntime sessions: a run past its deadline is
cut between kernels, and the options are clean again for the next run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from support.models import write_model

from router.deadline import RunDeadline
from router.models import Model

X = np.zeros((2, 4), dtype=np.float32)


def _full_run_s(model: Model) -> float:
    start = time.perf_counter()
    model.predict(X)
    return time.perf_counter() - start


def test_a_run_past_its_deadline_is_cut_and_the_next_runs_clean(tmp_path: Path) -> None:
    slow = Model(write_model(tmp_path / "slow.onnx", kind="slow"), 2)
    fast = Model(write_model(tmp_path / "fast.onnx"), 1)
    full_s = _full_run_s(slow)
    deadline = RunDeadline(timeout_s=min(0.05, full_s / 20))
    deadline.watch(True)
    start = time.perf_counter()
    options = deadline.begin(time.perf_counter_ns())
    try:
        slow.predict(X, options)
        raised = False
    except Exception:
        raised = True
    cut_after_s = time.perf_counter() - start
    assert deadline.end() and raised
    assert cut_after_s < full_s / 2, (cut_after_s, full_s)
    options = deadline.begin(time.perf_counter_ns())
    out = fast.predict(X, options)  # the flag was reset: this run is not refused
    assert not deadline.end() and out.shape == (2, 1)
    assert deadline.cuts == 1


def test_runs_within_the_deadline_are_never_cut(tmp_path: Path) -> None:
    fast = Model(write_model(tmp_path / "fast.onnx"), 1)
    deadline = RunDeadline(timeout_s=0.5)
    deadline.watch(True)
    for _ in range(2000):  # the watchdog keeps waking and looking while these run
        options = deadline.begin(time.perf_counter_ns())
        fast.predict(X, options)
        assert not deadline.end()
    assert deadline.cuts == 0


def test_no_watchdog_while_no_challenger_serves(tmp_path: Path) -> None:
    deadline = RunDeadline(timeout_s=0.05)
    deadline.watch(False)
    assert deadline._thread is None  # nothing wakes in a process without a challenger
