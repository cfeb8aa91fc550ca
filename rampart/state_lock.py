"""One `rampart serve` per state directory.

Two servers on one state directory would share its worker slabs, its control word and
its rollout journal: two evaluators deciding, each overwriting the other. The owner holds
an flock on LOCK_FILE for its life; the kernel drops it when the owner dies, however it
dies, so a SIGKILLed owner never blocks the next start. The commands that only read the
state directory or append to the model registry (`models register|list`, `report`) do not
take it: registering while serving is how a rollout starts.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from router.config import ConfigError

LOCK_FILE = "serve.lock"  # holds the owner's pid, for the message a second server prints


class StateDirInUse(ConfigError):
    """Another `rampart serve` owns the state directory (exit 2, as a config mistake)."""


def own(state: Path) -> int:
    """Take the state directory for this process's life; returns the lock's descriptor
    (close-on-exec: children that outlive this process must not keep the lock)."""
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(fd)
        os.close(fd)
        raise StateDirInUse(
            f"state directory {state} is in use by another rampart serve (pid {owner}); "
            "stop it or choose another --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _owner(fd: int) -> str:
    """The owner's pid, as it wrote it; it writes it just after taking the lock."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"
