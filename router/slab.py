"""The mmap'd state file and the numba kernels that record into a worker's slab.

Kernels take the *address* of a slot (an int) rather than an ndarray: unboxing
an array argument costs numba's dispatcher ~0.4 µs per call, an int ~0.05 µs,
and the latency record has a 0.5 µs budget. The address is valid for as long as
the `SharedMemory` that produced it is open.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from router import hdr, layout
from router.layout import Counter

STATE_FILE = "rampart.shm"


class LayoutMismatch(RuntimeError):
    """The state file on disk was written with a different layout or config."""


def _int64_at_codegen(typingctx: Any, addr: Any) -> Any:
    sig = types.CPointer(types.int64)(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.int64)))

    return sig, codegen


def _float64_at_codegen(typingctx: Any, addr: Any) -> Any:
    sig = types.CPointer(types.float64)(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float64)))

    return sig, codegen


# Typed as Any: mypy cannot see through numba's intrinsic decorator.
_int64_at: Any = intrinsic(_int64_at_codegen)
_float64_at: Any = intrinsic(_float64_at_codegen)

_REQUESTS = int(Counter.REQUESTS)
_CANDIDATES = int(Counter.CANDIDATES)
_ERR_NAN = int(Counter.ERR_NAN)
_ERR_RANGE = int(Counter.ERR_RANGE)
_OUT_OF_RANGE = int(Counter.OUT_OF_RANGE_PREDICTIONS)
_COUNTERS = layout.COUNTERS_WORD
_LATENCY = layout.LATENCY_WORD
_PRED_HIST = layout.PRED_HIST_WORD
_SEG_REQUESTS = layout.SEG_REQUESTS_WORD
_N_BINS = layout.N_PRED_BINS
_HIGHEST = hdr.HIGHEST_US


@numba.njit(cache=True)
def record_request(slot_addr: int, latency_us: int, cell: int, error: int) -> None:
    """One answered request of this slot: latency, request and error counts."""
    w = numba.carray(_int64_at(slot_addr), (_SEG_REQUESTS + 2 * cell + 2,))
    w[_COUNTERS + _REQUESTS] += 1
    v = min(max(latency_us, 0), _HIGHEST)
    w[_LATENCY + hdr.counts_index(v)] += 1
    w[_SEG_REQUESTS + 2 * cell] += 1
    w[_SEG_REQUESTS + 2 * cell + 1] += error


@numba.njit(cache=True)
def record_predictions(slot_addr: int, predictions: np.ndarray) -> int:
    """Validate a model's output and, if every value is a probability, add them
    to the prediction histogram. Returns 0, or the error counter it bumped."""
    w = numba.carray(_int64_at(slot_addr), (_PRED_HIST + _N_BINS,))
    flat = predictions.ravel()
    bad = 0
    nan = False
    for p in flat:
        if not (p >= 0.0 and p <= 1.0):
            bad += 1
            if p != p:
                nan = True
    if bad:
        w[_COUNTERS + _OUT_OF_RANGE] += bad
        kind = _ERR_NAN if nan else _ERR_RANGE
        w[_COUNTERS + kind] += 1
        return kind
    w[_COUNTERS + _CANDIDATES] += flat.size
    for p in flat:
        w[_PRED_HIST + min(int(p * _N_BINS), _N_BINS - 1)] += 1
    return 0


@numba.njit(cache=True)
def bump(slot_addr: int, counter: int) -> None:
    w = numba.carray(_int64_at(slot_addr), (_COUNTERS + layout.N_COUNTERS,))
    w[_COUNTERS + counter] += 1


@numba.njit(cache=True)
def record_event(
    slot_addr: int,
    tables: tuple[int, int, int, int],
    cell: int,
    bucket: int,
    click: int,
    prediction: float,
) -> None:
    """One impression (click=0) or click (click=1) with its shown prediction."""
    seg_events, seg_pred, bucket_events, bucket_pred = tables
    w = numba.carray(_int64_at(slot_addr), (bucket_events + 2 * bucket + 2,))
    w[seg_events + 2 * cell + click] += 1
    w[bucket_events + 2 * bucket + click] += 1
    if click == 0:
        f = numba.carray(_float64_at(slot_addr), (bucket_pred + bucket + 1,))
        f[seg_pred + cell] += prediction
        f[bucket_pred + bucket] += prediction


@dataclass(frozen=True)
class Geometry:
    n_slabs: int
    n_cells: int
    n_buckets: int

    @property
    def slab(self) -> np.dtype:
        return layout.slab_dtype(self.n_cells, self.n_buckets)

    @property
    def file_bytes(self) -> int:
        return layout.CONTROL_BYTES + self.n_slabs * self.slab.itemsize


class SharedMemory:
    """The state file mapped into this process, viewed through the layout dtypes."""

    def __init__(self, path: Path, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        fd = os.open(path, os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, geometry.file_bytes)
        finally:
            os.close(fd)
        raw = np.frombuffer(self._mmap, dtype=np.uint8)
        self.base_address = int(raw.ctypes.data)
        self.control = np.ndarray((), dtype=layout.CONTROL_DTYPE, buffer=self._mmap)
        self.slabs = np.ndarray(
            (geometry.n_slabs,),
            dtype=geometry.slab,
            buffer=self._mmap,
            offset=layout.CONTROL_BYTES,
        )
        # A memoryview read of one word is the cheapest aligned 8-byte load
        # Python offers (~40 ns, and it returns an int).
        self._words = memoryview(self._mmap).cast("Q")
        self._control_index = layout.CONTROL_DTYPE.fields["control"][1] // 8  # type: ignore[index]

    # -- control block ------------------------------------------------------
    def control_word(self) -> int:
        return self._words[self._control_index]

    def write_control(self, word: int) -> None:
        self._words[self._control_index] = word

    def heartbeat_ns(self) -> int:
        return int(self.control["heartbeat_ns"])

    def slot_address(self, slab: int, slot: int) -> int:
        slab_dtype = self.geometry.slab
        slots_offset = slab_dtype.fields["slots"][1]  # type: ignore[index]
        slot_size = layout.slot_dtype(self.geometry.n_cells, self.geometry.n_buckets).itemsize
        return (
            self.base_address
            + layout.CONTROL_BYTES
            + slab * slab_dtype.itemsize
            + slots_offset
            + slot * slot_size
        )

    def close(self) -> None:
        # Views into the mapping must go before it can close.
        del self.control, self.slabs
        self._words.release()
        # A caller may still hold a view; then the mapping goes with the process.
        with contextlib.suppress(BufferError):
            self._mmap.close()

    # -- creation -----------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, geometry: Geometry) -> SharedMemory:
        """Attach to the state file, creating it first if there is none.

        An existing file must have been written with this layout version and
        the same segment space and bucket count: its counters are meaningless
        under any other.
        """
        path = state_dir / STATE_FILE
        if not path.exists():
            _create(path, geometry)
        on_disk = _read_geometry(path)
        if on_disk.n_cells != geometry.n_cells or on_disk.n_buckets != geometry.n_buckets:
            raise LayoutMismatch(
                f"{path} holds counters for {on_disk.n_cells} segment cells and "
                f"{on_disk.n_buckets} prediction buckets, but the config defines "
                f"{geometry.n_cells} and {geometry.n_buckets}; use another --state-dir "
                "or move the file aside"
            )
        if on_disk.n_slabs < geometry.n_slabs:
            raise LayoutMismatch(
                f"{path} has {on_disk.n_slabs} worker slabs, fewer than the {geometry.n_slabs} "
                "this config needs; use another --state-dir or move the file aside"
            )
        return cls(path, on_disk)

    @classmethod
    def attach(cls, state_dir: Path) -> SharedMemory:
        path = state_dir / STATE_FILE
        return cls(path, _read_geometry(path))


def _read_geometry(path: Path) -> Geometry:
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(layout.CONTROL_BYTES), dtype=layout.CONTROL_DTYPE)
    if header.size != 1 or int(header["magic"][0]) != layout.MAGIC:
        raise LayoutMismatch(f"{path} is not a Rampart state file")
    version = int(header["layout_version"][0])
    if version != layout.LAYOUT_VERSION:
        raise LayoutMismatch(
            f"{path} has layout version {version}; this Rampart reads version "
            f"{layout.LAYOUT_VERSION}; use another --state-dir or move the file aside"
        )
    geometry = Geometry(
        int(header["n_slabs"][0]), int(header["n_cells"][0]), int(header["n_buckets"][0])
    )
    if path.stat().st_size < geometry.file_bytes:
        raise LayoutMismatch(f"{path} is truncated")
    return geometry


def _create(path: Path, geometry: Geometry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Reserve the blocks: a sparse file would SIGBUS a writer on a full disk.
        os.posix_fallocate(fd, 0, geometry.file_bytes)
        header = np.zeros((), dtype=layout.CONTROL_DTYPE)
        header["magic"] = layout.MAGIC
        header["layout_version"] = layout.LAYOUT_VERSION
        header["n_slabs"] = geometry.n_slabs
        header["n_cells"] = geometry.n_cells
        header["n_buckets"] = geometry.n_buckets
        header["control"] = layout.pack_control(0, 0, False, 0)
        os.pwrite(fd, header.tobytes(), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    # Readers never see a half-written header: the file appears whole or not at all.
    os.replace(tmp, path)


class SlabLock:
    """Exclusive ownership of one slab index, held through an fcntl lock.

    The kernel drops the lock when its owner dies, however it dies, so a
    restarted worker can take over the slab (and its counts) at once.
    """

    def __init__(self, state_dir: Path, n_slabs: int) -> None:
        lock_dir = state_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        for index in range(n_slabs):
            fd = os.open(lock_dir / f"slab-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.index = index
            self._fd = fd
            return
        raise RuntimeError(
            f"all {n_slabs} worker slabs in {state_dir} are taken; "
            "raise [serve] max_workers or stop the other server using this state directory"
        )

    def release(self) -> None:
        os.close(self._fd)
