"""bench.sched_share on real processes: it sets another process's threads, as
bench.bench_evaluator_sched does to a live evaluator and worker."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench import sched_share

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="Linux scheduling")


@pytest.fixture
def three_threads() -> Iterator[int]:
    """A child process with three threads, until the test ends: its pid."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, sys; e = threading.Event(); "
            "[threading.Thread(target=e.wait, daemon=True).start() for _ in range(2)]; "
            "print('up', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        yield child.pid
    finally:
        child.kill()
        child.wait()


def seen(tid: int) -> tuple[int, int, int]:
    return (
        os.sched_getscheduler(tid),
        os.getpriority(os.PRIO_PROCESS, tid),
        sched_share.slice_of(tid),
    )


def test_every_thread_of_another_process_gets_the_share(three_threads: int) -> None:
    share = sched_share.Share(os.SCHED_BATCH, 5, sched_share.MIN_SLICE_NS)
    done = sched_share.apply_to_process(share, three_threads)
    tids = [int(t) for t in os.listdir(f"/proc/{three_threads}/task")]
    assert len(tids) == 3
    slices = sched_share.kernel_has_custom_slices()
    for tid in tids:
        policy, nice, slice_ns = seen(tid)
        assert (policy, nice) == (os.SCHED_BATCH, 5)
        if slices:
            assert slice_ns == sched_share.MIN_SLICE_NS
    assert done == slices


def test_a_slice_of_0_gives_back_the_kernels_own(three_threads: int) -> None:
    default = sched_share.slice_of(three_threads)
    sched_share.apply_to_process(sched_share.Share(os.SCHED_OTHER, 0, 250_000), three_threads)
    if sched_share.kernel_has_custom_slices():
        assert sched_share.slice_of(three_threads) == 250_000
    assert not sched_share.apply_to_process(sched_share.Share(os.SCHED_OTHER, 0), three_threads)
    assert sched_share.slice_of(three_threads) == default


def test_nice_is_never_lowered_unless_exact(three_threads: int) -> None:
    os.setpriority(os.PRIO_PROCESS, three_threads, 10)
    sched_share.apply(sched_share.Share(os.SCHED_OTHER, 5), three_threads)
    assert os.getpriority(os.PRIO_PROCESS, three_threads) == 10
    if os.geteuid() == 0:  # lowering nice is a privilege
        sched_share.apply(sched_share.Share(os.SCHED_OTHER, 5), three_threads, exact=True)
        assert os.getpriority(os.PRIO_PROCESS, three_threads) == 5


def test_a_slice_below_the_kernels_floor_is_asked_for_at_the_floor(three_threads: int) -> None:
    applied = sched_share.apply(sched_share.Share(os.SCHED_OTHER, 0, 1_000), three_threads)
    if sched_share.kernel_has_custom_slices():
        assert applied and sched_share.slice_of(three_threads) == sched_share.MIN_SLICE_NS
