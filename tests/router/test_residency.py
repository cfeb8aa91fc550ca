"""Releasing numba's compiler pages (router/residency.py): a real process, its own mappings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from router import residency

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, madvise")


def _llvm_rss_kb(pid: int) -> int:
    """Resident kB of the process's libllvmlite mappings (its /proc/PID/smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and ":" not in head:  # a mapping's first line
                inside = residency.LIBRARY in line
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@linux_only
def test_residency_release_drops_llvm_pages_and_kernels_still_run(
    tmp_path: os.PathLike[str],
) -> None:
    """A kernel loaded, LLVM's pages released: the process holds far less of LLVM, and the
    kernel (and a new compilation) still give the right answers."""
    script = textwrap.dedent(
        """
        import sys
        import numba
        from router import residency

        @numba.njit
        def twice(x):
            return 2 * x

        assert twice(21) == 42  # LLVM's code runs: its pages come in
        print("loaded", flush=True)
        sys.stdin.readline()
        assert residency.release_compiler(force=True)
        print("released", twice(4), flush=True)
        sys.stdin.readline()

        @numba.njit
        def thrice(x):
            return 3 * x

        print("compiled", thrice(5), twice(5), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "loaded"
        loaded = _llvm_rss_kb(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["released", "8"]
        released = _llvm_rss_kb(proc.pid)
        assert loaded > 10_000, loaded  # tens of MB of LLVM resident after one compilation
        assert released < loaded / 4, (loaded, released)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["compiled", "15", "10"]
    finally:
        proc.kill()
        proc.wait()


def test_residency_release_is_rate_limited_unless_forced() -> None:
    residency.release_compiler(force=True)
    assert not residency.due()
    assert not residency.release_compiler()  # within EVERY_S of the last release
