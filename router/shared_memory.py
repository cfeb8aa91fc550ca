"""The state file: one mmap'd file holding the control block and the worker slabs.

`SharedMemory` maps it and views it through the dtypes of `router.layout`;
`SlabLock` gives each worker process exclusive ownership of one slab.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router import layout

STATE_FILE = "rampart.shm"


class LayoutMismatch(RuntimeError):
    """The state file on disk was written with a different layout or config."""


class StateDirFull(OSError):
    """The state directory has no room for the state file's blocks."""


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

    # -- the control word: router.control reads and writes it through these ------
    def control_word(self) -> int:
        return self._words[self._control_index]

    def write_control(self, word: int) -> None:
        self._words[self._control_index] = word

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
        _reserve(path, on_disk.file_bytes)
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
        _fallocate(fd, tmp, geometry.file_bytes)
        header = np.zeros((), dtype=layout.CONTROL_DTYPE)
        header["magic"] = layout.MAGIC
        header["layout_version"] = layout.LAYOUT_VERSION
        header["n_slabs"] = geometry.n_slabs
        header["n_cells"] = geometry.n_cells
        header["n_buckets"] = geometry.n_buckets
        header["created_ns"] = time.time_ns()
        header["control"] = 0  # split 0, champion in slot 0, no challenger, generation 0
        os.pwrite(fd, header.tobytes(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    # Readers never see a half-written header: the file appears whole or not at all.
    os.replace(tmp, path)


def _reserve(path: Path, size: int) -> None:
    """Reserve the blocks of an existing file too: one made sparse by an older Rampart (or
    copied sparsely) would otherwise still SIGBUS a worker on a full disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        _fallocate(fd, path, size)
    finally:
        os.close(fd)


def _fallocate(fd: int, path: Path, size: int) -> None:
    # A write through the mapping to a page the file system has no block for kills the
    # writer with SIGBUS; reserved blocks turn a full disk into this error, at start.
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StateDirFull(
            f"no room for the state file in {path.parent} ({size / 2**20:.1f} MiB needed): "
            f"{os.strerror(e.errno)}",
        ) from None


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
