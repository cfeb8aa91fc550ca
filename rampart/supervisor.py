"""`rampart serve`: checks the whole configuration, then runs the workers (uvicorn) and
an evaluator process it keeps alive (single-host, or this host's fleet agent)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrails.policy import Policy
from rampart import sockets, state_lock
from rampart.child import Child
from rampart.zygote import ForkedChild, Zygote, ZygoteGone
from router import lifeline
from router.config import Address, Config, check_secrets
from router.control import ControlBlock, beat_ns
from router.shared_memory import SharedMemory


def check(config: Config) -> None:
    """Every section and secret, checked before any worker or evaluator starts: a mistake
    is one line naming the key (ConfigError), exit 2."""
    from guardrails.alerts import AlertsConfig

    Policy.from_config(config)
    AlertsConfig.from_section(config.raw.get("alerts", {})).with_env().check()
    check_secrets(fleet=config.fleet.enabled)


def serve(config: Config, config_path: str | None = None) -> int:
    """Check the config, take the state directory, bind the listeners, then run the
    evaluator (supervised) and the workers until SIGTERM or SIGINT."""
    check(config)
    lock = state_lock.own(config.state_path)  # refuses before binding or touching state
    try:
        main = Address(host=config.serve.host, port=config.serve.port)
        listeners = [sockets.bind(main, "[serve] host/port")]
        admin = config.serve.admin_address
        try:
            if admin is not None:
                listeners.append(sockets.bind(admin, "[serve] admin_listen"))
            return _run(config, config_path, listeners, inherited=[lock])
        finally:
            for sock in listeners:
                sock.close()
            if len(listeners) > 1:
                sockets.remove_unix_socket(admin)
    finally:
        os.close(lock)


def _run(
    config: Config,
    config_path: str | None,
    listeners: list[socket.socket],
    inherited: Sequence[int] = (),
) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from guardrails import evaluator
    from router.app import warm_kernels

    evaluator.prepare(config).close()
    # numba and the hot path's kernels, loaded before the zygote is forked: the worker (this
    # process, with one worker) and every evaluator then share their pages (rampart.zygote).
    warm_kernels(config)
    zygote = Zygote.fork(close=[s.fileno() for s in listeners] + list(inherited))
    # Workers are spawned processes: they re-read the same file plus the flags, and die
    # with this process (router.lifeline). The environment is set before the evaluator's
    # supervisor thread starts: a setenv here while that thread execs a child (vfork, the
    # child reading `environ`) can hand the exec a freed environment array (EFAULT).
    os.environ["RAMPART_CONFIG"] = str(Path(config_path).resolve()) if config_path else ""
    overrides = {k: getattr(config.serve, k) for k in ("host", "port", "workers")}
    overrides["state_dir"] = str(config.state_path)
    if len(listeners) > 1:  # the address bound, as a worker sees it in scope["server"]
        overrides["admin_listen"] = str(sockets.bound_address(listeners[1]))
    os.environ["RAMPART_SERVE_OVERRIDES"] = json.dumps(overrides)
    os.environ[lifeline.SERVE_PID_ENV] = str(os.getpid())
    supervisor = _EvaluatorSupervisor(config, zygote)
    supervisor.start()

    # uvicorn hands a SIGTERM back to the handler it found once it has shut down: a
    # supervisor that gave up stopped the server that way, and that is exit 1, not death.
    def _terminated(signum: int, frame: Any) -> None:
        if supervisor.gave_up:
            raise SystemExit(1)
        supervisor.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, _terminated)
    from router.http_fast import FastHttpToolsProtocol

    settings = uvicorn.Config(
        "router.listeners:create_app",
        factory=True,
        host=config.serve.host,
        port=config.serve.port,
        workers=config.serve.workers,
        loop="uvloop",
        # uvicorn's httptools protocol, answering a whole /predict or /events in place.
        http=FastHttpToolsProtocol if config.serve.answer_in_place else "httptools",
        access_log=False,
        log_level="warning",
        # No `server: uvicorn` on every answer: it names the server to whoever asks, and
        # uvicorn checks each header of every response with two regexes (~0.5 µs).
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    started = True
    try:
        if config.serve.workers > 1:
            # Its workers are this process's children, started from this (the main) thread.
            Multiprocess(settings, sockets=listeners).run()
        else:
            server = uvicorn.Server(settings)
            server.run(sockets=listeners)
            started = server.started
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        supervisor.stop()
        if zygote is not None:
            zygote.close()
        signal.signal(signal.SIGTERM, previous)
    if supervisor.gave_up:
        print(f"rampart: {supervisor.gave_up}", file=sys.stderr)
        return 1
    return 0 if started else 1


GIVE_UP_GRACE_S = 15.0  # uvicorn's graceful shutdown (5 s) with room to spare


class _EvaluatorSupervisor(threading.Thread):
    """Keeps the evaluator process running: restarted when it dies, with a growing
    delay when it keeps dying. While it is down the workers' stale-heartbeat check
    sends every request to the champion."""

    def __init__(self, config: Config, zygote: Zygote | None = None) -> None:
        super().__init__(name="rampart-evaluator-supervisor", daemon=True)
        self.config = config
        self.zygote = zygote
        self.stopping = threading.Event()
        self.proc: Child | ForkedChild | None = None
        self.restarts = 0
        self.control: ControlBlock | None = None
        self.spawned_at = 0.0
        self.gave_up = ""  # why it stopped restarting, if it did
        # When `_hung` last looked, and when it last found this thread had been stopped.
        self.checked_at = self.resumed_at = beat_ns() / 1e9

    STARTUP_GRACE_S = 300.0
    # An evaluator that dies before its first heartbeat this many times in a row, the same
    # way each time, will not start: say why and stop instead of restarting it forever.
    MAX_START_FAILURES = 3

    def _spawn(self) -> None:
        self.proc = self._forked() or self._in_fresh_interpreter()
        cpu = self.config.serve.evaluator_cpu
        if cpu >= 0 and self.proc.pid is not None and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError as e:
                print(f"rampart: cannot pin the evaluator to CPU {cpu}: {e}", file=sys.stderr)

    @property
    def _function(self) -> str:
        return "run_fleet" if self.config.fleet.enabled else "run"

    def _forked(self) -> ForkedChild | None:
        """Forked by the zygote, sharing numba's pages with this process; it dies with the
        zygote, which dies with this process."""
        if self.zygote is None or not self.zygote.alive:
            return None
        child = ForkedChild(
            self.zygote,
            "guardrails.process",
            self._function,
            (self.config,),
            {"parent": self.zygote.pid},
        )
        try:
            child.start()
        except ZygoteGone as e:
            print(f"rampart: {e}; starting the evaluator on its own", file=sys.stderr)
            self.zygote = None
            return None
        return child

    def _in_fresh_interpreter(self) -> Child:
        """A fresh interpreter (no resource tracker: rampart.child), started from this
        thread: the evaluator's PR_SET_PDEATHSIG fires when this thread ends (after stop()
        terminated it) or the process dies."""
        child = Child("guardrails.process", self._function, (self.config,), {"parent": os.getpid()})
        child.start()
        return child

    def run(self) -> None:
        delay = 0.5
        failures: list[str] = []
        while not self.stopping.is_set():
            self._spawn()
            started, self.spawned_at = time.monotonic(), beat_ns() / 1e9
            assert self.proc is not None
            while self.proc.is_alive() and not self.stopping.is_set():
                self.proc.join(0.5)
                if self._hung(started):
                    print("rampart: evaluator heartbeat stopped; replacing it", file=sys.stderr)
                    self.proc.kill()
            if self.stopping.is_set():
                # Not before it has gone: its parent-death signal fires when this thread
                # ends, and would cut its graceful stop short.
                self.proc.join(self.STOP_S + 1)
                return
            why = self._start_error()
            failures = [*failures, why] if why else []
            if len(failures) >= self.MAX_START_FAILURES and len(set(failures)) == 1:
                self.gave_up = (
                    f"the evaluator failed {len(failures)} times at start: {why}; stopping"
                )
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts the workers down
                # A SIGTERM that lands while uvicorn is still starting can be lost: then
                # leave anyway, once a graceful shutdown would have had its time.
                if not self.stopping.wait(GIVE_UP_GRACE_S):
                    print(f"rampart: {self.gave_up}", file=sys.stderr, flush=True)
                    os._exit(1)
                return
            self.restarts += 1
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            print(
                f"rampart: evaluator exited with {self.proc.exitcode}; restarting in {delay:g} s",
                file=sys.stderr,
            )
            self.stopping.wait(delay)

    def _start_error(self) -> str:
        """The one line a failed evaluator start left, if it died before its first tick."""
        from guardrails.process import START_ERROR_FILE

        path = self.config.state_path / START_ERROR_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _hung(self, started: float) -> bool:
        """Alive but silent: no heartbeat for twice the workers' stale timeout, counted
        from when this thread last ran too. Before its first heartbeat an evaluator gets
        STARTUP_GRACE_S: the first start on a machine compiles the numba kernels, which can
        take a minute."""
        if self.control is None:
            self.control = ControlBlock(SharedMemory.attach(self.config.state_path))
        now = beat_ns() / 1e9
        limit = 2 * self.config.serve.stale_after_s
        if now - self.checked_at > limit:
            # This thread was stopped as well (a frozen cgroup, a paused VM, SIGSTOP to the
            # process group): the evaluator's silence meanwhile says nothing, and on resume
            # it may not have run yet. It gets the whole limit again from now.
            self.resumed_at = now
        self.checked_at = now
        beat = self.control.heartbeat_ns() / 1e9
        if beat < self.spawned_at:
            return time.monotonic() - started > self.STARTUP_GRACE_S
        return now - max(beat, self.resumed_at) > limit

    STOP_S = 5.0

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(self.STOP_S)
            if self.proc.is_alive():
                self.proc.kill()
