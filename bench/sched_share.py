"""A thread's share of a CPU, set from outside: its scheduling policy, its nice value and its
time slice, with sched_setattr(2). bench.bench_evaluator_sched gives a live evaluator and
worker each arrangement in turn with it.

Why the slice: Linux's fair scheduler (EEVDF, 6.6 and later) lets the running task finish
its slice before a task that wakes takes the CPU; the default slice is 0.7 ms × (1 + log2
CPUs) on recent kernels, 1.4 ms read on two. Since 6.12 a task may ask for a shorter one
(`sched_runtime`, 0.1-100 ms), and a shorter slice also means an earlier deadline, so the
scheduler picks that task sooner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass

# sched_setattr(2) has no wrapper in glibc or Python: the raw system call, where it is known.
SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "arm64": 274}.get(platform.machine())
MIN_SLICE_NS = 100_000  # the kernel clamps a requested slice to 0.1-100 ms


class _SchedAttr(ctypes.Structure):
    _fields_ = [  # struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes)
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class Share:
    """A policy (os.SCHED_BATCH, os.SCHED_IDLE, os.SCHED_OTHER), a nice value never below the
    thread's own (raising priority needs a privilege), and a slice in ns (0: the kernel's)."""

    policy: int
    nice: int
    slice_ns: int = 0


def apply(share: Share, tid: int = 0, *, exact: bool = False) -> bool:
    """Give thread `tid` (0: the caller) `share`. True when a slice was asked for and set; without
    sched_setattr or custom slices (a kernel before 6.12 ignores the slice) the policy and
    nice are still set, and False is returned. `exact`: share's nice even if it is below the
    thread's (a privilege), as it is to leave SCHED_IDLE (a benchmark that compares them)."""
    nice = share.nice if exact else max(share.nice, _nice_of(tid))
    if SYS_SCHED_SETATTR is not None:
        attr = _SchedAttr(
            size=ctypes.sizeof(_SchedAttr),
            sched_policy=share.policy,
            sched_nice=nice,
            # 0 asks for the kernel's slice (and drops one asked for before)
            sched_runtime=max(share.slice_ns, MIN_SLICE_NS) if share.slice_ns else 0,
        )
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(SYS_SCHED_SETATTR, tid, ctypes.byref(attr), 0) == 0:
            return bool(share.slice_ns) and slice_of(tid) == attr.sched_runtime
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        os.sched_setscheduler(tid, share.policy, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, nice)  # on Linux, PRIO_PROCESS names a thread
    return False


def apply_to_process(share: Share, pid: int, *, exact: bool = False) -> bool:
    """`apply` to every thread of process `pid`: True if every slice was set."""
    done = True
    for task in os.listdir(f"/proc/{pid}/task"):
        done = apply(share, int(task), exact=exact) and done
    return done


def slice_of(tid: int = 0) -> int:
    """The thread's slice in ns from /proc (se.slice), or 0 where it is not shown."""
    path = "/proc/thread-self/sched" if tid == 0 else f"/proc/{tid}/sched"
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        for line in f:
            if line.startswith("se.slice"):
                return int(line.split(":")[1])
    return 0


def kernel_has_custom_slices() -> bool:
    """Linux 6.12 and later honour a fair task's requested slice."""
    if platform.system() != "Linux":
        return False
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 12)


def _nice_of(tid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return 0
