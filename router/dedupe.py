"""Exactly-once events: which (token, candidate, type) keys this host has counted.

One file in the state directory, `STATE_DIR/events.dedupe`, mapped by every worker::

    +--------------------------------+  offset 0
    | header (4 KiB): geometry,      |
    | one issue epoch per bucket     |
    +--------------------------------+  HEADER_BYTES
    | bucket 0: n_blocks x 512 bits  |  keys of tokens issued in one epoch (span_s seconds)
    | ...                            |
    | bucket B-1                     |
    +--------------------------------+

A key goes to the bucket of its token's issue epoch (issued // span_s, modulo B). The
ring covers more than token_ttl_s plus the signer's clock skew, so a bucket is reused
(zeroed for a new epoch) only once every token it held has expired: memory is fixed
by the TTL and the rate the filter is sized for, never by traffic.

Each bucket is a blocked Bloom filter (one 512-bit block, one cache line, per key;
`PROBES` bits in it). It never answers "new" for a key it holds, so a repeated event
is never counted twice; it may answer "seen" for a new key (a false duplicate), at the
rate `false_duplicate_rate` gives for the bucket's load. A click is counted only when
its impression's key is present (see `Verdict.ORPHAN`).

numba has no atomics and every worker writes here: check-and-insert of a whole batch
runs under an `fcntl` lock (`locks/dedupe.lock`; the kernel releases it if its holder
dies), waited for at most `LOCK_WAIT_S` on a worker's event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from router.bloom import (
    BITS_PER_KEY,
    BLOCK_BITS,
    BLOCK_WORDS,
    PROBES,
    check_insert,
    false_duplicate_rate_at,
    false_positive_rate,
    set_bits,
)
from router.config import ServeConfig
from router.shared_memory import StateDirFull
from router.tokens import MAX_SKEW_S

DEDUPE_FILE = "events.dedupe"
MAGIC = 0x31505544_45444152  # "RADEDUP1"
VERSION = 1
HEADER_BYTES = 4096
N_BUCKETS = 16
CLOCK_SLACK_S = 2  # workers of one host read the clock up to this far apart
LOCK_WAIT_S = 0.1  # a batch normally holds the lock ~10 µs
LOCK_POLL_S = 0.0002

HEADER_DTYPE = np.dtype(
    {
        "names": ["magic", "version", "n_buckets", "span_s", "n_blocks", "probes", "epochs"],
        "formats": ["<u8", "<u8", "<u8", "<u8", "<u8", "<u8", f"({N_BUCKETS},)<i8"],
        "offsets": [0, 8, 16, 24, 32, 40, 64],
        "itemsize": HEADER_BYTES,
    }
)


class FilterBusy(RuntimeError):
    """Another process held the filter's lock past `LOCK_WAIT_S`: nothing was decided."""


class Geometry:
    """Bucket span and size for a TTL, a clock skew and the event rate to size for."""

    def __init__(self, ttl_s: int, skew_s: int, events_per_s: int) -> None:
        # Reusing a bucket is safe when the ring minus one bucket covers every issue time a
        # worker still accepts: ttl back, skew ahead, workers' clocks CLOCK_SLACK_S apart.
        self.span_s = math.ceil((ttl_s + skew_s + CLOCK_SLACK_S + 1) / (N_BUCKETS - 1))
        keys = events_per_s * self.span_s
        self.n_blocks = max(1, math.ceil(keys * BITS_PER_KEY / BLOCK_BITS))
        self.events_per_s = events_per_s

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + N_BUCKETS * self.n_blocks * BLOCK_WORDS * 8

    def false_duplicate_rate(self, events_per_s: float) -> float:
        """Chance that a new key is taken for a duplicate, in a bucket filled at this rate
        for its whole span (the worst moment: just before the next bucket starts)."""
        return false_positive_rate(events_per_s * self.span_s / self.n_blocks, PROBES)


def geometry_of(serve: ServeConfig) -> Geometry:
    """The filter that [serve] token_ttl_s and events_per_s call for."""
    return Geometry(serve.token_ttl_s, MAX_SKEW_S, serve.events_per_s)


class Dedupe:
    """This host's filter, mapped; `check` decides a batch under the file lock."""

    def __init__(self, state_dir: Path, geometry: Geometry) -> None:
        self.path = state_dir / DEDUPE_FILE
        self.geometry = geometry
        self._lock_fd = _lock_fd(state_dir)
        with self.locked():
            _ensure(self.path, geometry)
            fd = os.open(self.path, os.O_RDWR)
            try:
                self._mmap = mmap.mmap(fd, geometry.file_bytes)
            finally:
                os.close(fd)
        self.header = np.ndarray((), dtype=HEADER_DTYPE, buffer=self._mmap)
        self.epochs = self.header["epochs"]
        self.bits = np.ndarray(
            (N_BUCKETS, geometry.n_blocks, BLOCK_WORDS),
            dtype=np.uint64,
            buffer=self._mmap,
            offset=HEADER_BYTES,
        )

    def warm(self) -> None:
        """Load the kernel now (a worker's start), on scratch arrays and outside the lock:
        not on the first /events request, and never while other workers wait for it."""
        empty = np.empty(0, np.uint64)
        scratch = np.zeros((N_BUCKETS, 1, BLOCK_WORDS), np.uint64)
        epochs = np.zeros(N_BUCKETS, np.int64)
        check_insert(
            epochs,
            scratch,
            1,
            empty,
            empty,
            empty.view(np.int64),
            empty.view(np.int64),
            empty.view(np.int64),
        )

    @contextlib.contextmanager
    def locked(self, wait_s: float | None = None) -> Iterator[None]:
        """The file's lock; with `wait_s`, `FilterBusy` if it is not free within that.

        A worker takes it on its event loop: bounded, a holder that stalls (stopped, or
        descheduled for long) delays another worker's /predict by at most `wait_s`."""
        if wait_s is None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        busy = f"the event filter stayed locked for {wait_s:g} s"
                        raise FilterBusy(busy) from None
                    time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def check(
        self, nonce: np.ndarray, tag: np.ndarray, issued: np.ndarray, click: np.ndarray
    ) -> np.ndarray:
        """A `Verdict` per event, the batch decided and inserted as one step."""
        out = np.empty(nonce.shape[0], np.int64)
        with self.locked(LOCK_WAIT_S):
            check_insert(
                self.epochs, self.bits, self.geometry.span_s, nonce, tag, issued, click, out
            )
        return out

    def fill(self, epoch: int) -> float:
        """The share of set bits in `epoch`'s bucket (0 when the ring holds another epoch)."""
        s = epoch % N_BUCKETS
        if int(self.epochs[s]) != epoch:
            return 0.0
        return set_bits(self.bits[s]) / (self.geometry.n_blocks * BLOCK_BITS)

    def load(self, now: int) -> tuple[float, float]:
        """(fill, false-duplicate rate) of the bucket that tokens issued now go to."""
        fill = self.fill(now // self.geometry.span_s)
        return fill, false_duplicate_rate_at(fill)

    def close(self) -> None:
        del self.header, self.epochs, self.bits
        with contextlib.suppress(BufferError):
            self._mmap.close()
        os.close(self._lock_fd)


def prepare(state_dir: Path, geometry: Geometry) -> None:
    """Make (or keep) the filter's file before any worker starts: a state directory with
    no room for it is `StateDirFull` here, one line at start, not a worker's crash."""
    fd = _lock_fd(state_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _ensure(state_dir / DEDUPE_FILE, geometry)
    finally:
        os.close(fd)


def _lock_fd(state_dir: Path) -> int:
    lock_dir = state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return os.open(lock_dir / "dedupe.lock", os.O_RDWR | os.O_CREAT, 0o600)


def _ensure(path: Path, geometry: Geometry) -> None:
    """The file with this geometry, created if missing. One of another geometry (a new TTL
    or rate) is replaced: the keys it held are forgotten. The caller holds the lock."""
    if not _matches(path, geometry):
        _create(path, geometry)


def _matches(path: Path, g: Geometry) -> bool:
    try:
        with open(path, "rb") as f:
            head = np.frombuffer(f.read(HEADER_BYTES), dtype=HEADER_DTYPE)
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    return bool(
        head.size == 1
        and int(head["magic"][0]) == MAGIC
        and int(head["version"][0]) == VERSION
        and int(head["n_buckets"][0]) == N_BUCKETS
        and int(head["span_s"][0]) == g.span_s
        and int(head["n_blocks"][0]) == g.n_blocks
        and int(head["probes"][0]) == PROBES
        and size >= g.file_bytes
    )


def _create(path: Path, geometry: Geometry) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Reserved, not sparse: a write through the mapping on a full disk would SIGBUS.
        os.posix_fallocate(fd, 0, geometry.file_bytes)
        header = np.zeros((), dtype=HEADER_DTYPE)
        header["magic"] = MAGIC
        header["version"] = VERSION
        header["n_buckets"] = N_BUCKETS
        header["span_s"] = geometry.span_s
        header["n_blocks"] = geometry.n_blocks
        header["probes"] = PROBES
        os.pwrite(fd, header.tobytes(), 0)
    except OSError as e:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StateDirFull(
            f"no room for the exactly-once event filter in {path.parent} "
            f"({geometry.file_bytes / 2**20:.1f} MiB needed; [serve] events_per_s and "
            f"token_ttl_s size it): {os.strerror(e.errno)}"
        ) from None
    os.close(fd)
    os.replace(tmp, path)


def _micro_timing() -> None:
    """A /events batch of 100 through the lock and the kernel, and the size table."""
    import tempfile
    import timeit

    with tempfile.TemporaryDirectory() as tmp:
        d = Dedupe(Path(tmp), Geometry(3600, 60, 2000))
        d.warm()
        now = int(time.time())
        rng = np.random.default_rng(0)
        tag = np.full(100, 7 << 32, np.uint64)
        issued = np.full(100, now, np.int64)
        click = np.zeros(100, np.int64)
        n = 2000
        batches = [rng.integers(0, 2**63, 100, dtype=np.uint64) for _ in range(n)]
        it = iter(batches)
        new = min(
            timeit.repeat(lambda: d.check(next(it), tag, issued, click), number=n // 5, repeat=5)
        ) / (n // 5)
        again = batches[0]
        dup = min(timeit.repeat(lambda: d.check(again, tag, issued, click), number=n, repeat=5)) / n
        d.close()
    print(f"batch of 100: new keys {new * 1e6:.1f} µs, duplicates {dup * 1e6:.1f} µs")
    print("ttl_s events_per_s file_MiB false_dup@rate @2x @4x")
    for ttl in (600, 3600, 86400):
        for rate in (2000, 5000, 20000):
            g = Geometry(ttl, 60, rate)
            rates = [g.false_duplicate_rate(rate * m) for m in (1, 2, 4)]
            print(ttl, rate, f"{g.file_bytes / 2**20:.1f}", *(f"{r:.3%}" for r in rates))


if __name__ == "__main__":
    _micro_timing()
