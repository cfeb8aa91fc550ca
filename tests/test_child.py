"""rampart.child: a function run in a fresh process, started without multiprocessing."""

from __future__ import annotations

import signal
from pathlib import Path

from support.models import write_model
from support.server import register, serving

from bench.bench_footprint import descendants, role
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


def test_serve_runs_its_evaluator_without_a_resource_tracker(tmp_path: Path) -> None:
    """`rampart serve --workers 1` is two processes: itself (the worker) and the evaluator."""
    state = tmp_path / "state"
    register(state, write_model(tmp_path / "champion.onnx"))
    with serving(state) as server:
        evaluator = int(server.status()["evaluator"]["pid"])
        tree = descendants(server.proc.pid)
        roles = sorted(role(pid, server.proc.pid, evaluator) for pid in tree)
        assert roles == ["evaluator", "serve"], roles
