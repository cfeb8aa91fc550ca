"""rampart.child: a function run in a fresh process, started without multiprocessing."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from rampart.child import Child


def test_child_runs_the_named_function_with_its_arguments(tmp_path: Path) -> None:
    source, copy = tmp_path / "a.txt", tmp_path / "b.txt"
    source.write_text("pickled across")
    child = Child("shutil", "copyfile", (source, copy))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and not child.is_alive()
    assert copy.read_text() == "pickled across"


def test_child_exitcode_is_the_exit_status_or_minus_the_signal() -> None:
    exits = Child("os", "_exit", (3,))
    exits.start()
    exits.join(60)
    assert exits.exitcode == 3
    sleeps = Child("time", "sleep", (600,))
    sleeps.start()
    assert sleeps.is_alive() and sleeps.exitcode is None
    sleeps.kill()
    sleeps.join(60)
    assert sleeps.exitcode == -signal.SIGKILL


def test_child_starts_while_another_thread_changes_the_environment() -> None:
    """The exec reads the copy of the environment taken by `start`, never the process's
    `environ`, which a setenv in another thread reallocates: read there, the exec of a vfork
    child failed with EFAULT (a `rampart serve` set its workers' variables while its
    supervisor thread started the evaluator)."""
    stop = threading.Event()

    def churn() -> None:
        # The C environment only (os.environ's mapping stays as it is): variables added
        # and removed, so its array is reallocated again and again.
        i = 0
        while not stop.is_set():
            os.putenv(f"RAMPART_TEST_CHURN_{i % 40}", "x" * (i % 300))
            i += 1
            if i % 40 == 0:
                for k in range(40):
                    os.unsetenv(f"RAMPART_TEST_CHURN_{k}")

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        children = []
        for _ in range(40):
            child = Child("os", "_exit", (0,))
            child.start()  # raised OSError(EFAULT) in about a third of starts before
            children.append(child)
    finally:
        stop.set()
        thread.join()
        for k in range(40):
            os.unsetenv(f"RAMPART_TEST_CHURN_{k}")
    for child in children:
        child.join(60)
        assert child.exitcode == 0
