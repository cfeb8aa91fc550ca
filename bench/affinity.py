"""Pinning this process to one CPU for a measurement."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


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
