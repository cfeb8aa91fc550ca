"""A real small file system for one child process: a tmpfs mounted in the child's own mount
namespace (`unshare -m`, or `unshare -rm` without root), so nothing outlives the child and
nobody else sees it. The test reaches it through /proc/PID/root.

    prefix = small_fs(mount, 32 * MiB, copy_from=seed)   # None from namespaces(): skip
    server = start_server(mount, prefix=prefix)
    root = inside(server.proc.pid, mount)
    filler = fill(root)                                  # the disk is full
    filler.unlink()                                      # and has room again
"""

from __future__ import annotations

import errno
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

MiB = 2**20

# $0 the mount point, $1 a directory to copy in first (or ""), then the command to exec.
_SCRIPT = (
    'mount -t tmpfs -o size="$SIZE" tmpfs "$0" && { [ -z "$1" ] || cp -a "$1"/. "$0"/; } '
    '&& shift && exec "$@"'
)


@functools.cache
def namespaces() -> tuple[str, ...] | None:
    """The unshare command that may mount a tmpfs here, or None if none can."""
    if shutil.which("unshare") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        for cmd in (("unshare", "-m"), ("unshare", "-rm")):
            probe = [*cmd, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', d]
            if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
                return cmd
    return None


def small_fs(mount: Path, size: int, copy_from: Path | None = None) -> list[str]:
    """A command prefix: mount a `size`-byte tmpfs on `mount` (copying `copy_from` into
    it), then exec the rest of the command line there, keeping the pid."""
    cmd = namespaces()
    assert cmd is not None, "no mount namespace here: skip the test first"
    mount.mkdir(parents=True, exist_ok=True)
    return [
        "env",
        f"SIZE={size}",
        *cmd,
        "sh",
        "-c",
        _SCRIPT,
        str(mount),
        str(copy_from or ""),
    ]


def inside(pid: int, path: Path) -> Path:
    """`path` as process `pid` sees it (in its mount namespace)."""
    return Path(f"/proc/{pid}/root{path}")


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system has no block left; the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (MiB, 4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return filler
