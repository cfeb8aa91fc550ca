"""rampart.zygote: evaluators forked from a single-threaded process that shares numba's
pages with the worker. The zygote runs in a fresh interpreter here (a forked zygote needs
a process with one thread, and the test runner has more)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support.models import write_model
from support.server import register, serving, start_server, stop_server, wait_for

from bench.bench_footprint import parent_of, role
from bench.bench_predict_servers import process_tree

DRIVER = r"""
import json, os, signal, sys, time
from rampart.zygote import ForkedChild, Zygote

zygote = Zygote.fork()
assert zygote is not None
out = {}
exits = ForkedChild(zygote, "os", "_exit", (3,))
exits.start()
exits.join(30)
out["exit"] = exits.exitcode
raises = ForkedChild(zygote, "json", "loads", ("not json",))
raises.start()
raises.join(30)
out["raises"] = raises.exitcode
sleeps = ForkedChild(zygote, "time", "sleep", (600,))
sleeps.start()
out["sleeping_alive"] = sleeps.is_alive()
stat = open(f"/proc/{sleeps.pid}/stat").read()
out["parent_is_zygote"] = int(stat.rsplit(")", 1)[1].split()[1]) == zygote.pid
sleeps.terminate()
sleeps.join(30)
out["terminated"] = sleeps.exitcode
orphan = ForkedChild(zygote, "time", "sleep", (600,))
orphan.start()
out["zygote"], out["orphan"] = zygote.pid, orphan.pid
print(json.dumps(out), flush=True)
if sys.argv[1] == "die":
    os.kill(os.getpid(), signal.SIGKILL)  # the server dies; the zygote and its child with it
zygote.close()
"""


def _driver(mode: str) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, mode], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout, proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[0]))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_zygote_forks_children_and_reports_how_they_ended() -> None:
    out = _driver("close")
    assert out["exit"] == 3
    assert out["raises"] == 1  # a traceback on stderr, exit 1
    assert out["sleeping_alive"] and out["parent_is_zygote"]
    assert out["terminated"] == -signal.SIGTERM
    # close(): the zygote ends, and its last child with it
    wait_for(lambda: not _alive(out["zygote"]) and not _alive(out["orphan"]), 10, "all gone")


def test_zygote_and_its_children_die_with_the_server() -> None:
    out = _driver("die")
    wait_for(
        lambda: not _alive(out["zygote"]) and not _alive(out["orphan"]),
        2.0,
        "the zygote and its child gone within 2 s of the server's SIGKILL",
        every=0.02,
    )


def test_serve_forks_its_evaluator_from_the_zygote_and_restarts_it_there(tmp_path: Path) -> None:
    """`rampart serve --workers 1`: itself (the worker), the zygote and the evaluator, its
    child, and no resource tracker; a killed evaluator is forked again by the same zygote."""
    state = tmp_path / "state"
    register(state, write_model(tmp_path / "champion.onnx"))
    with serving(state) as server:
        evaluator = int(server.status()["evaluator"]["pid"])
        roles = sorted(
            role(pid, server.proc.pid, evaluator) for pid in process_tree(server.proc.pid)
        )
        assert roles == ["evaluator", "serve", "zygote"], roles
        zygote = parent_of(evaluator)
        assert zygote is not None and parent_of(zygote) == server.proc.pid
        os.kill(evaluator, signal.SIGKILL)
        again = server.wait_for_status(
            lambda s: s["evaluator"]["pid"] != evaluator, "a restarted evaluator"
        )
        assert parent_of(int(again["evaluator"]["pid"])) == zygote


def test_evaluator_starts_on_its_own_when_the_zygote_is_gone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    register(state, write_model(tmp_path / "champion.onnx"))
    server = start_server(state)
    try:
        evaluator = int(server.status()["evaluator"]["pid"])
        zygote = parent_of(evaluator)
        assert zygote is not None and zygote != server.proc.pid
        os.kill(zygote, signal.SIGKILL)  # the evaluator goes with it (PR_SET_PDEATHSIG)
        again = server.wait_for_status(
            lambda s: s["evaluator"]["pid"] != evaluator and not s["stale"],
            "an evaluator started without the zygote",
        )
        assert parent_of(int(again["evaluator"]["pid"])) == server.proc.pid
    finally:
        stop_server(server)


ORPHAN = r"""
import os, socket
from rampart import zygote as z

_, theirs = socket.socketpair()
r, w = os.pipe()
middle = os.fork()
if middle == 0:  # the zygote's stand-in: forks a child, and is gone before the child starts
    stand_in = os.getpid()
    child = os.fork()
    if child == 0:
        os.read(r, 1)  # until the stand-in is dead (the child now has another parent)
        z._child(theirs, ("time", "sleep", (600,), {}), stand_in)
    print(child, flush=True)
    os._exit(0)
os.waitpid(middle, 0)
os.write(w, b"x")
"""


def test_a_child_whose_zygote_died_before_it_started_dies_too() -> None:
    """A child is given its zygote's pid from before the fork. Read as getppid() once the
    zygote was gone, it named the reaper that adopted the child, and the child ran on with
    no one to stop it (seen: the server-death test's driver waited 120 s on its pipe)."""
    out = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    wait_for(lambda: not _alive(child), 10, "the orphaned child gone", every=0.02)
