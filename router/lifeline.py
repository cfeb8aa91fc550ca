"""A child of `rampart serve` dies with it, however it dies.

A worker or an evaluator left behind by a SIGKILLed `rampart serve` keeps answering on
the port with nobody supervising it, and a new `rampart serve` on the same state
directory would share it with them. Linux's PR_SET_PDEATHSIG has the kernel signal the
child when its parent goes; the parent may already be gone by the time the child asks,
so the child then checks its parent pid once more.

The "parent" here is the thread that started the child: a child started from a thread
gets the signal when that thread ends, not only when the process does.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SERVE_PID_ENV = "RAMPART_SERVE_PID"  # set by `rampart serve` for the workers it starts


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when `parent` (its parent) dies; if it
    already has, send it now. SIGKILL by default: an orphan has nobody to answer to, and
    every piece of state it writes survives a SIGKILL (single-writer slabs, SQLite)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # Closes the race: a parent that died before the prctl above sends nothing.
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def die_with_serve() -> None:
    """In a worker process that `rampart serve` started: die with it. A no-op in the
    `rampart serve` process itself (one worker runs there) and outside `rampart serve`."""
    serve = int(os.environ.get(SERVE_PID_ENV) or 0)
    if serve and serve != os.getpid():
        die_with_parent(serve)
