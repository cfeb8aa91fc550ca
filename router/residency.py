"""Keeping numba's compiler out of a process's resident memory once its kernels are loaded.

Loading even one cached numba kernel runs LLVM's code: ~50-65 MB of libllvmlite.so's text
becomes resident, in each process (measured: a process at 140 MB PSS after its first
cached kernel call is at 73 MB once those pages are released, and the kernel runs as
before). The loaded kernels are machine code in their own memory and never call back into
LLVM; only a new compilation does. So the worker's ticker and the evaluator's loop call
`release_compiler()` now and then, which drops libllvmlite's pages from the process: its
code is read again from the page cache (or the file) if numba ever compiles again, and a
page the process wrote (relocations) is never dropped. Off Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
import time
from typing import Any, NamedTuple

MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # linux/mman.h, Linux >= 5.4
EVERY_S = 30.0  # a kernel loaded meanwhile brings some pages back; the next call drops them
LIBRARY = "libllvmlite"

_last = -EVERY_S
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


class Mapping(NamedTuple):
    start: int
    end: int
    writable: bool
    anonymous_kb: int  # pages of it this process has written (copied on write)


def mappings(library: str = LIBRARY) -> list[Mapping]:
    """This process's mappings of `library`, from /proc/self/smaps."""
    out: list[Mapping] = []
    current: list[Any] | None = None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):  # a mapping's first line
                    if current is not None:
                        out.append(Mapping(*current))
                    current = None
                    if library in line:
                        start, end = head.split("-")
                        perms = line.split()[1]
                        current = [int(start, 16), int(end, 16), "w" in perms, 0]
                elif current is not None and head == "Anonymous:":
                    current[3] = int(line.split()[1])
    except OSError:
        return []
    if current is not None:
        out.append(Mapping(*current))
    return out


def due() -> bool:
    """Whether `release_compiler()` would act now (a cheap check for an event loop)."""
    return _madvise is not None and time.monotonic() - _last >= EVERY_S


def release_compiler(force: bool = False) -> bool:
    """Drop LLVM's pages from this process (at most once per EVERY_S unless `force`);
    True if the kernel took it for every mapping.

    A mapping this process cannot write and never wrote (the library's code, most of it)
    is dropped outright (MADV_DONTNEED: its pages come back from the file, unchanged, if
    touched again), shared with the other processes of the tree or not. Any other mapping
    only gets the MADV_PAGEOUT hint, which never loses a write (and skips pages another
    process maps too)."""
    global _last
    if not (force or due()) or _madvise is None:
        return False
    _last = time.monotonic()
    ranges = mappings()
    ok = bool(ranges)
    for m in ranges:
        advice = MADV_DONTNEED if not m.writable and m.anonymous_kb == 0 else MADV_PAGEOUT
        if _madvise(m.start, m.end - m.start, advice) != 0:
            ok = False  # EINVAL: a kernel without MADV_PAGEOUT
    return ok
