"""`rampart serve` under process faults, with real processes and real signals: a worker,
the evaluator or the whole server SIGKILLed, a SIGTERM under load, and a second server
started on a state directory that is in use."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.models import write_model
from support.net import free_port
from support.server import (
    ADMIN_TOKEN,
    READY_S,
    STATE_S,
    Server,
    rampart,
    register,
    register_pair,
    request_ids,
    serving,
    split_in_force,
    start_server,
    stop_server,
    wait_for,
)

from router import snapshot
from router.control import ControlBlock, beat_ns
from router.layout import Counter
from router.shared_memory import SharedMemory

ORPHANS_GONE_S = 2.0  # the promise: no child of a dead `rampart serve` outlives it by more
ROW = [0.5, 1.0, -0.5, 2.0]
STALE_AFTER_S = 2.0  # the evaluator test's [serve] stale_after_s (ticks are 1 s apart)


# -- processes --------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """Running: a zombie has exited (whoever adopted it may not reap it in a container)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(root: int) -> set[int]:
    """Every live process below `root` (its workers, the evaluator, their helpers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                parents[int(entry.name)] = stat[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _owner_pids(state: Path) -> list[int]:
    shm = SharedMemory.attach(state)
    try:
        return [int(pid) for pid in shm.slabs["owner_pid"]]
    finally:
        shm.close()


def _counts(state: Path) -> tuple[int, int]:
    """(requests, impressions) counted for the champion, summed over every slab."""
    shm = SharedMemory.attach(state)
    try:
        champion = snapshot.take(shm).champion
        return champion.counter(Counter.REQUESTS), champion.impressions
    finally:
        shm.close()


def _heartbeat_s(state: Path) -> float:
    shm = SharedMemory.attach(state)
    try:
        return ControlBlock(shm).heartbeat_ns() / 1e9
    finally:
        shm.close()


# -- traffic ----------------------------------------------------------------------------------
class Load:
    """Client threads sending /predict and an impression event for every answer, each on
    its own keep-alive connection, counting what the server answered with 200."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.predicted = 0  # /predict answered 200
        self.impressions = 0  # impressions the server said it accepted
        self.failed = 0  # requests that got no answer (connection refused or reset)
        self.unexpected: list[str] = []  # answers other than 200: none should come
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                with httpx.Client(base_url=self.url, timeout=10) as client:
                    while not self.stop.is_set():
                        n += 1
                        self._one(client, f"load-{index}-{n}")
            except httpx.HTTPError:
                with self.lock:
                    self.failed += 1
                time.sleep(0.01)  # a server that is down refuses at once: don't spin

    def _one(self, client: httpx.Client, request_id: str) -> None:
        r = client.post("/predict", json={"request_id": request_id, "features": [ROW]})
        if r.status_code != 200:
            self.unexpected.append(f"/predict {r.status_code} {r.text}")
            return
        token, prediction = r.json()["token"], r.json()["predictions"][0]
        with self.lock:
            self.predicted += 1
        event = {"token": token, "type": "impression", "prediction": prediction}
        answer = client.post("/events", json={"events": [event]})
        if answer.status_code != 200:
            self.unexpected.append(f"/events {answer.status_code} {answer.text}")
            return
        with self.lock:
            self.impressions += int(answer.json()["accepted"])

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: self.impressions >= 20, STATE_S, "the load answered")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@contextlib.contextmanager
def _stopped_on_exit(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        stop_server(server)


# -- 1. a dead `rampart serve` leaves no process behind ---------------------------------------
@pytest.mark.parametrize("workers", [pytest.param(1, id="one-worker"), pytest.param(2, id="two")])
def test_serve_sigkilled_leaves_no_orphan_and_frees_the_state_dir(
    tmp_path: Path, workers: int
) -> None:
    state = register_pair(tmp_path / "state")
    with _stopped_on_exit(start_server(state, workers=workers)) as server:
        children = _descendants(server.proc.pid)
        evaluator = int(server.status()["evaluator"]["pid"])
        assert evaluator in children
        assert set(_owner_pids(state)[:workers]) <= children | {server.proc.pid}
        os.kill(server.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        server.proc.wait()
        wait_for(
            lambda: not any(_alive(pid) for pid in children),
            ORPHANS_GONE_S,
            f"the children {sorted(children)} gone",
            every=0.02,
        )
        assert time.monotonic() - killed <= ORPHANS_GONE_S
        assert _port_free(server.port)
    # The kernel released the dead owner's lock: the next server starts on the same state.
    with serving(state, workers=workers) as again:
        assert again.status()["models"]["champion"]["version"] == "1"


# -- 2. one `rampart serve` per state directory -----------------------------------------------
def test_second_serve_on_a_state_dir_in_use_is_refused_before_it_binds(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    with serving(state) as server:
        before = sorted(p.name for p in state.iterdir())
        port = free_port()
        out = rampart("serve", "--state-dir", str(state), "--port", str(port))
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            f"rampart: state directory {state.resolve()} is in use by another rampart serve "
            f"(pid {server.proc.pid}); stop it or choose another --state-dir"
        ]
        assert _port_free(port)
        assert sorted(p.name for p in state.iterdir()) == before
        # The commands that only read the state directory or add to its registry still work.
        assert register(state, write_model(tmp_path / "third.onnx", weights=[0.3] * 4)) == ["3"]
        listing = rampart("models", "list", "--state-dir", str(state))
        assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 3
        assert rampart("report", "--list", "--state-dir", str(state)).returncode == 0
        assert server.status()["phase"] == 0  # the first server serves on, untouched


# -- 3. faults under traffic ------------------------------------------------------------------
def test_worker_sigkilled_under_load_is_replaced_and_keeps_its_counts(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    with serving(state, workers=2) as server, Load(server.url) as load:
        owners = _owner_pids(state)
        victim = owners[0]
        before, _ = _counts(state)
        os.kill(victim, signal.SIGKILL)
        # uvicorn's supervisor starts a new worker; it takes a free slab: the dead one's.
        wait_for(
            lambda: _owner_pids(state)[0] not in (0, victim),
            READY_S,
            "a new worker in the killed worker's slab",
        )
        replaced = load.predicted
        wait_for(lambda: load.predicted > replaced + 20, STATE_S, "traffic after the kill")
        load.stop.set()
    after, impressions = _counts(state)
    assert not _alive(victim)
    assert after >= before  # the slab kept what the killed worker had counted
    # Every answered request was counted once; the killed worker may have counted a
    # request whose answer it never sent (at most one per connection it held).
    assert load.predicted <= after <= load.predicted + load.failed
    assert load.impressions <= impressions <= load.impressions + load.failed


def test_evaluator_sigkilled_workers_fail_safe_then_it_is_restarted(tmp_path: Path) -> None:
    config = tmp_path / "rampart.toml"
    config.write_text(f"[serve]\nstale_after_s = {STALE_AFTER_S}\n")
    state = register_pair(tmp_path / "state")
    with serving(state, workers=2, config=config) as server:
        server.start_rollout("2")
        challengers = request_ids(server.hash_seed(), 300, "challenger", 20)
        evaluator = int(server.status()["evaluator"]["pid"])
        # Frozen, the server cannot restart the evaluator: the workers, their own
        # processes, must route around it alone.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            os.kill(evaluator, signal.SIGKILL)
            wait_for(lambda: not _alive(evaluator), STATE_S, "the evaluator dead")
            last_beat = _heartbeat_s(state)
            server.wait_for_status(lambda s: s["stale"] is True, "workers seeing it stale")
            # Stale once the last heartbeat is stale_after_s old, seen within a
            # worker tick (0.1 s) and this poll; never before.
            assert STALE_AFTER_S <= beat_ns() / 1e9 - last_beat <= STALE_AFTER_S + 1.5
            with httpx.Client(base_url=server.url, timeout=10) as client:
                arms = {
                    client.post("/predict", json={"request_id": rid, "features": [ROW]}).json()[
                        "arm"
                    ]
                    for rid in challengers
                }
            assert arms == {"champion"}
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        status = server.wait_for_status(
            lambda s: s["evaluator"]["pid"] != evaluator and split_in_force(s),
            "a restarted evaluator and the split back in force",
        )
        assert status["split_bp"] == 300


def test_a_frozen_server_keeps_its_evaluator_when_it_thaws(tmp_path: Path) -> None:
    """A frozen cgroup or a paused VM stops every process at once: on resume the evaluator's
    heartbeat is old, but it was stopped, not hung. The supervisor was stopped as well, and
    must not replace it, even if it runs again first."""
    config = tmp_path / "rampart.toml"
    config.write_text(f"[serve]\nstale_after_s = {STALE_AFTER_S}\n")
    state = register_pair(tmp_path / "state")
    with serving(state, workers=1, config=config) as server:
        evaluator = int(server.status()["evaluator"]["pid"])
        frozen = [server.proc.pid, *_descendants(server.proc.pid)]
        assert evaluator in frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            # Frozen until the heartbeat is older than the supervisor's limit (twice the
            # stale timeout): what it would replace a hung evaluator for.
            wait_for(
                lambda: beat_ns() / 1e9 - _heartbeat_s(state) > 2 * STALE_AFTER_S + 0.5,
                STATE_S,
                "a heartbeat past the supervisor's limit",
            )
            # The server thaws first and its supervisor (a look every 0.5 s) sees the old
            # heartbeat while the evaluator is still stopped.
            for pid in frozen:
                if pid != evaluator:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(1.0)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        thawed = beat_ns() / 1e9
        wait_for(lambda: _heartbeat_s(state) > thawed, STATE_S, "a heartbeat after the thaw")
        assert _alive(evaluator)
        assert int(server.status()["evaluator"]["pid"]) == evaluator


class InFlight:
    """One /predict on a raw keep-alive connection whose body is held back half-way: a
    request in flight by construction, for as long as the test likes."""

    BODY = b'{"request_id": "in-flight", "features": [[0.5, 1.0, -0.5, 2.0]]}'

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        # A whole request first: the connection is then accepted and owned by a worker.
        self.sock.sendall(self._head() + self.BODY)
        assert self._answer().startswith(b"HTTP/1.1 200")
        self.sock.sendall(self._head() + self.BODY[:20])
        # Read by the worker (its parser has the headers) once the kernel holds no more.
        wait_for(lambda: self._unread() == 0, STATE_S, "the held request's head read")

    def _head(self) -> bytes:
        return (
            b"POST /predict HTTP/1.1\r\nhost: rampart\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(self.BODY)}\r\n\r\n".encode()
        )

    def _unread(self) -> int | None:
        """Bytes the server's end of this connection has not read, from /proc/net/tcp."""
        client = self.sock.getsockname()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, _, queues = line.split()[1:5]
            if (
                int(local.split(":")[1], 16) == self.port
                and int(remote.split(":")[1], 16) == client
            ):
                return int(queues.split(":")[1], 16)
        return None

    def _answer(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536) or b"<closed>"
            if data.endswith(b"<closed>"):
                return data
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += self.sock.recv(65536)
        return head

    def finish(self) -> bytes:
        """Send the rest of the body; the answer's status line and headers."""
        self.sock.sendall(self.BODY[20:])
        try:
            return self._answer()
        finally:
            self.sock.close()


@pytest.mark.parametrize("workers", [pytest.param(1, id="one-worker"), pytest.param(2, id="two")])
def test_sigterm_under_load_answers_in_flight_and_counts_each_request_once(
    tmp_path: Path, workers: int
) -> None:
    state = register_pair(tmp_path / "state")
    server = start_server(state, workers=workers)
    with _stopped_on_exit(server), Load(server.url) as load:
        held = InFlight(server.port)
        children = _descendants(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGTERM)  # the server alone: it stops its children
        answer = held.finish()
        server.proc.wait(30)
        load.stop.set()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    wait_for(
        lambda: not any(_alive(pid) for pid in children),
        ORPHANS_GONE_S,
        f"the children {sorted(children)} gone",
        every=0.02,
    )
    assert not load.unexpected
    with serving(state, workers=workers):
        requests, impressions = _counts(state)
    # Counted after a restart on the same state: each answered request exactly once (the
    # held connection's two included).
    assert requests == load.predicted + 2
    assert impressions == load.impressions


# -- 4. admin on its own listener -------------------------------------------------------------
def test_admin_listen_unix_socket_serves_admin_and_the_main_port_refuses_it(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "admin.sock"
    config = tmp_path / "rampart.toml"
    config.write_text(f'[serve]\nadmin_listen = "unix:{sock}"\n')
    state = register_pair(tmp_path / "state")
    env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
    with serving(state, workers=2, config=config) as server:
        refused = server.admin("pause")
        assert refused.status_code == 404
        assert refused.json()["error"] == "not_found"
        assert server.metric("rampart_rejected_total", reason="not_found") >= 1
        url = f"unix:{sock}"
        out = rampart("rollout", "start", "2", "--url", url, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        server.wait_for_status(split_in_force, "the rollout started through the socket")
        out = rampart("status", "--json", "--url", url, env=env)
        assert out.returncode == 0 and '"split_bp": 300' in out.stdout
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as admin:
            predict = admin.post("http://rampart/predict", json={"request_id": "x"})
            assert predict.status_code == 404 and predict.json()["error"] == "not_found"
    assert not sock.exists()


def test_admin_listen_tcp_port_is_the_only_one_that_takes_admin(tmp_path: Path) -> None:
    admin_port = free_port()
    config = tmp_path / "rampart.toml"
    config.write_text(f'[serve]\nadmin_listen = "127.0.0.1:{admin_port}"\n')
    state = register_pair(tmp_path / "state")
    with serving(state, config=config) as server:
        assert server.admin("pause").status_code == 404
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            started = admin.post("/admin/rollout/start", json={"version": "2"}, headers=headers)
            assert started.status_code == 200, started.text
            assert admin.get("/status").status_code == 200
            assert admin.get("/metrics").status_code == 404
        server.wait_for_status(split_in_force, "the rollout started on the admin port")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            "localhost",
            "rampart: [serve] admin_listen must be host:port (port 1-65535) or "
            "unix:/path/to.sock, got 'localhost'",
            id="no-port",
        ),
        pytest.param(
            "unix:",
            "rampart: [serve] admin_listen unix: needs a socket path, like unix:/run/rampart.sock",
            id="no-path",
        ),
    ],
)
def test_admin_listen_mistake_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, value: str, message: str
) -> None:
    state = str(tmp_path / "state")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rampart.cli",
            "serve",
            "--state-dir",
            state,
            "--port",
            "0",
            "--admin-listen",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "state").exists()
