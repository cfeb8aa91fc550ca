"""The evaluator process: what `rampart serve` spawns and supervises.

`run` ticks the single-host `Evaluator`; `run_fleet` ticks this host's fleet agent
(`guardrails.fleet.HostAgent`). Either writes one line to START_ERROR_FILE when it cannot
start, so the supervisor can tell a start that fails the same way every time (and stop)
from a crash worth restarting. Either dies with the `rampart serve` that started it
(`parent`), however that dies: an orphaned evaluator would keep deciding for a state
directory nobody serves, and in fleet mode keep a lease for a host that is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from guardrails import storage
from guardrails.cpu_budget import give_way, yield_to_workers
from guardrails.evaluator import Evaluator
from router import lifeline, residency
from router import status as status_file
from router.config import Config
from router.control import ControlWriter
from router.shared_memory import SharedMemory

START_ERROR_FILE = "evaluator.error"


def run(config: Config, tick_s: float = 1.0, parent: int | None = None) -> None:
    """Single-host evaluator process: beat, decide, publish, once a tick, until SIGTERM.
    A failure before the first tick leaves one line in START_ERROR_FILE for the supervisor."""
    parent = _die_with(parent)
    error_file = config.state_path / START_ERROR_FILE
    try:
        shm = SharedMemory.attach(config.state_path)
        control = ControlWriter(shm)
        control.claim(os.getpid())
        evaluator = Evaluator(config, shm)
        publisher = status_file.Publisher(config.state_path, shm)
    except Exception as e:
        error_file.write_text(f"{type(e).__name__}: {e}".splitlines()[0] + "\n")
        raise
    error_file.unlink(missing_ok=True)
    ticks(tick_s, lambda: _tick(control, evaluator, publisher), evaluator.close, parent=parent)


def _die_with(parent: int | None) -> int:
    """Die with `parent` (default: the current parent), before anything slow: the first
    start compiles the numba kernels, a minute in which the parent may die. And give way to
    the workers on a shared CPU (`yield_to_workers`)."""
    parent = os.getppid() if parent is None else parent
    lifeline.die_with_parent(parent)
    yield_to_workers()
    return parent


def _tick(control: ControlWriter, evaluator: Evaluator, publisher: status_file.Publisher) -> None:
    control.beat()
    evaluator.tick()
    give_way()
    try:
        publisher.publish(lambda: evaluator.status(evaluator.clock()))  # only while someone reads
    except OSError as e:  # a full disk: workers serve the last status; the next tick retries
        if not storage.is_fault(e):
            raise


def ticks(
    tick_s: float,
    tick: Callable[[], None],
    close: Callable[[], None],
    between: Callable[[float], bool] | None = None,
    parent: int | None = None,
) -> None:
    """Call `tick` every `tick_s` until SIGTERM or SIGINT, or until `parent` (default: the
    current parent) is no longer this process's parent, then `close`. `between(seconds)`
    fills the wait instead of sleeping and may return True to tick early."""
    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.getppid() if parent is None else parent
    next_tick = time.monotonic()
    try:
        # The kernel kills an orphan at once (`lifeline`); this check is for platforms
        # without PR_SET_PDEATHSIG, where an orphan stops within a tick.
        while not stop and os.getppid() == parent:
            # A tick that raises ends the process: its heartbeat stops, workers fail safe
            # to the champion, and the supervisor starts a fresh evaluator.
            tick()
            residency.release_compiler()  # now and then: LLVM's pages, once kernels are loaded
            next_tick += tick_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (a slow disk): skip the missed ticks, don't burst
                next_tick = time.monotonic()
            if between is None:
                time.sleep(max(0.0, delay))
            elif between(max(0.0, delay)):
                next_tick = time.monotonic()
    finally:
        close()


def run_fleet(config: Config, tick_s: float = 1.0, parent: int | None = None) -> None:
    """Fleet-mode evaluator process: this host's `HostAgent` ticking until SIGTERM."""
    parent = _die_with(parent)
    error_file = config.state_path / START_ERROR_FILE
    try:
        shm = SharedMemory.attach(config.state_path)
        control = ControlWriter(shm)
        control.claim(os.getpid())
        from guardrails.fleet import HostAgent
        from guardrails.fleet_store import FleetStore

        store = FleetStore(config.fleet.url, config.fleet.name)
        host_id = config.fleet.host_id or f"{socket.gethostname()}:{config.serve.port}"
        agent = HostAgent(config, shm, control, store, host_id=host_id)
    except Exception as e:
        error_file.write_text(f"{type(e).__name__}: {e}".splitlines()[0] + "\n")
        raise
    error_file.unlink(missing_ok=True)
    ticks(tick_s, agent.tick, agent.close, between=agent.between, parent=parent)
