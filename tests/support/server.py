"""A real `rampart serve` on loopback, the `rampart` command line, and waiting for states.

    state = register_pair(tmp_path / "state")   # champion v1, candidate v2
    with serving(state) as server:              # ready: models loaded, evaluator ticking
        server.start_rollout("2")               # returns once the 3% split is in force
        ...

Tests wait for the state they need (`wait_for`, `Server.wait_for_status`), never for a
number of requests or an amount of time: how long a state takes to come depends on the
machine, the state itself does not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router import hashing
from router.control import ControlBlock
from router.shared_memory import SharedMemory
from support.models import write_model
from support.net import free_port

ADMIN_TOKEN = "test-admin-token"
READY_S = 120.0  # `rampart serve` up and its workers' models loaded
# The evaluator's first start on a machine compiles the numba kernels (a minute or so;
# the supervisor allows 300 s), and admin commands wait for it.
EVALUATOR_S = 300.0
STATE_S = 30.0  # any other state a test waits for; normally reached in well under a second
# Config for tests that stop the evaluator (`Server.evaluator_stopped`) to hold the split
# still: workers keep it until the heartbeat is an hour old, not the default 3 s (and the
# supervisor replaces a silent evaluator only after twice that).
HOLD_SPLIT = "[serve]\nstale_after_s = 3600.0\n"

T = TypeVar("T")
Status = dict[str, Any]


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.05
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    A predicate that raises AssertionError (a check that does not hold yet) or an httpx
    error (a server not answering yet) is polled again. On timeout this fails naming
    `what` and the last value or error the predicate gave.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
            last: object = value
        except (AssertionError, httpx.HTTPError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g} s (last: {last!r})")
        time.sleep(every)


# -- states of /status ------------------------------------------------------------------------
def evaluator_ticking(status: Status) -> bool:
    """The evaluator has published a status and the answering worker sees its heartbeat."""
    return bool(status.get("evaluator")) and status.get("stale") is False


def request_ids(seed: int, split_bp: int, arm: str, n: int, prefix: str = "r") -> list[str]:
    """The first `n` request IDs `prefix0`, `prefix1`, … that the split sends to `arm`."""
    ids = (f"{prefix}{i}" for i in itertools.count())
    return list(itertools.islice((r for r in ids if arm_of(r, seed, split_bp) == arm), n))


def arm_of(request_id: str, seed: int, split_bp: int) -> str:
    """The arm the split sends `request_id` to (router.hashing decides it)."""
    return "challenger" if hashing.is_challenger(request_id, split_bp, seed) else "champion"


def split_in_force(status: Status) -> bool:
    """The rollout is running at a nonzero split, and the answering worker routes by it.

    A rollout leaves `loading` only once every live worker has loaded the challenger (the
    evaluator waits for each worker's acknowledgement before it raises the split), so this
    also means the challenger is loaded on every worker.
    """
    return (
        status.get("state") == "running"
        and status["split_bp"] > 0
        and status["effective_split_bp"] == status["split_bp"]
        and status["models"]["challenger"] is not None
    )


# -- the command line -------------------------------------------------------------------------
def rampart(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `rampart ARGS` in a child process; its output is captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "rampart.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def register(state: Path, *models: Path) -> list[str]:
    """`rampart models register` each model into `state`, in order; the printed versions."""
    versions = []
    for path in models:
        out = rampart("models", "register", str(path), "--state-dir", str(state))
        assert out.returncode == 0, out.stderr
        versions.append(out.stdout.strip())
    return versions


def register_pair(state: Path, candidate: Path | None = None) -> Path:
    """Register a champion (v1) and a candidate (v2: `candidate`, or a linear model unlike
    the champion) into `state`, writing the model files beside it; return `state`."""
    champion = write_model(state.parent / "champion.onnx")
    if candidate is None:
        candidate = write_model(state.parent / "candidate.onnx", weights=[0.2] * 4)
    assert register(state, champion, candidate) == ["1", "2"]
    return state


# -- the server -------------------------------------------------------------------------------
class Server:
    """A running `rampart serve` child process (its own session, so it stops whole)."""

    def __init__(self, state: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.state = state
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc

    def status(self) -> Status:
        return dict(httpx.get(f"{self.url}/status", timeout=10).json())

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics: `name` with exactly these labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name}{labels} in /metrics")

    def admin(self, action: str, payload: dict[str, object] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}/admin/rollout/{action}",
            json=payload or {},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )

    def wait_for_status(
        self, check: Callable[[Status], bool], what: str, timeout: float = STATE_S
    ) -> Status:
        """Poll /status until `check` holds; return that status."""

        def reached() -> Status | None:
            status = self.status()
            return status if check(status) else None

        return wait_for(reached, timeout, what)

    def hash_seed(self) -> int:
        """The seed the split hashes request IDs with (set by the evaluator's first start)."""
        shm = SharedMemory.attach(self.state)
        try:
            return ControlBlock(shm).hash_seed
        finally:
            shm.close()

    @contextlib.contextmanager
    def evaluator_stopped(self) -> Iterator[int]:
        """SIGSTOP the evaluator for the block, SIGCONT after; yields its pid. Frozen, not
        killed: the supervisor would start a new one at once. Nothing then changes the split,
        so a test can watch the data plane alone; see HOLD_SPLIT for the workers' side."""
        pid = int(self.status()["evaluator"]["pid"])
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):  # replaced by the supervisor
                os.kill(pid, signal.SIGCONT)

    def start_rollout(self, version: str = "2") -> Status:
        """Start a rollout of `version` and return the status once its split is in force."""
        r = self.admin("start", {"version": version})
        assert r.status_code == 200, r.text
        return self.wait_for_status(split_in_force, f"the split of version {version} in force")


def start_server(
    state: Path,
    *,
    workers: int = 1,
    config: Path | None = None,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Server:
    """Start `rampart serve` on a free port; return once it is ready and its evaluator ticks.
    `prefix` runs it through another command (which must exec it, keeping its pid); `env` is
    added to the environment; `log` takes the server's stdout and stderr."""
    port = free_port()
    cmd = [*prefix, sys.executable, "-m", "rampart.cli", "serve", "--state-dir", str(state)]
    cmd += ["--port", str(port), "--workers", str(workers)]
    if config is not None:
        cmd += ["--config", str(config)]
    environ = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN, **(env or {}))
    out = None if log is None else log.open("ab")
    try:
        proc = subprocess.Popen(
            cmd,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()
    server = Server(state, port, proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"rampart serve exited with {proc.returncode}")
        return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200

    try:
        wait_for(ready, READY_S, "rampart serve ready", every=0.1)
        server.wait_for_status(evaluator_ticking, "the evaluator's heartbeat", EVALUATOR_S)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group; SIGKILL it if it has not gone in 15 s."""
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@contextlib.contextmanager
def serving(state: Path, **options: Any) -> Iterator[Server]:
    """`start_server(state, **options)`, stopped when the block ends."""
    server = start_server(state, **options)
    try:
        yield server
    finally:
        stop_server(server)
