"""router.lifeline: a child dies with its parent, however the parent dies, including a
parent that died before the child asked."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.server import wait_for

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from router.lifeline import die_with_parent
    die_with_parent(int(sys.argv[1]))
    print("armed", flush=True)
    time.sleep(60)
    """
)
# A parent that starts CHILD (which dies with it), says the child's pid, and waits.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "armed\\n"
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def test_lifeline_child_dies_within_moments_of_a_sigkilled_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        parent.wait()
        wait_for(lambda: not _alive(child), 2.0, "the child gone", every=0.01)
        assert time.monotonic() - killed < 2.0
    finally:
        parent.kill()
        parent.wait()


def test_lifeline_child_whose_parent_is_already_gone_dies_at_once() -> None:
    # A pid that is not this child's parent stands for a parent that died (the child was
    # adopted) before it called die_with_parent: no death signal would ever come.
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "1"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == -signal.SIGKILL
    assert out.stdout == ""
