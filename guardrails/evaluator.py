"""The evaluator process: the only writer of the control word.

Every tick it writes the heartbeat (workers fall back to 100% champion when it
goes stale) and applies queued admin commands. The guardrail metrics and the
phase policy plug into `tick` (not built yet: this controller moves the split
only on admin commands).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from router import layout
from router.config import Config
from router.registry import Registry, Status
from router.slab import Geometry, SharedMemory
from router.store import CommandStore

PHASE1_SPLIT_BP = 300


class Evaluator:
    def __init__(self, config: Config, shm: SharedMemory) -> None:
        self.config = config
        self.shm = shm
        state = config.state_path
        self.registry = Registry(state)
        self.commands = CommandStore(state)
        self.paused = False
        self._adopt_registry()

    def _word(self) -> tuple[int, int, bool, int]:
        return layout.unpack_control(self.shm.control_word())

    def _flip(self, split_bp: int, champion_slot: int, has_challenger: bool) -> None:
        generation = self._word()[3] + 1
        self.shm.write_control(
            layout.pack_control(split_bp, champion_slot, has_challenger, generation)
        )

    def _load_slot(self, slot: int, version: int) -> None:
        ctrl = self.shm.control
        ctrl["slot_model"][slot] = version
        ctrl["slot_seq"][slot] = int(ctrl["slot_seq"][slot]) + 1

    def _adopt_registry(self) -> None:
        """Make the slot table agree with the registry's champion (first start)."""
        ctrl = self.shm.control
        if int(ctrl["hash_seed"]) == 0:
            ctrl["hash_seed"] = secrets.randbits(63) | 1
        champions = self.registry.with_status(Status.CHAMPION)
        if not champions:
            return
        version = champions[-1].version
        _, champion_slot, has_challenger, _ = self._word()
        if int(ctrl["slot_model"][champion_slot]) != version:
            self._load_slot(champion_slot, version)
            self._flip(0, champion_slot, False)
        if has_challenger:
            challenger = int(ctrl["slot_model"][1 - champion_slot])
            if not challenger or self.registry.get(challenger).status != Status.CHALLENGER:
                self._flip(0, champion_slot, False)

    def tick(self) -> None:
        self.shm.control["heartbeat_ns"] = time.time_ns()
        for command_id, kind, payload in self.commands.pending():
            try:
                result = self.apply(kind, payload)
            except Exception as e:  # a bad command must not stop the evaluator
                result = {"ok": False, "error": "command_failed", "detail": str(e)}
            self.commands.finish(command_id, result)

    def apply(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        split, champion_slot, has_challenger, _ = self._word()
        challenger_slot = 1 - champion_slot
        if kind == "start":
            if has_challenger:
                return {"ok": False, "error": "rollout_in_progress"}
            try:
                version = int(payload.get("version", ""))
                record = self.registry.get(version)
            except (KeyError, ValueError):
                return {
                    "ok": False,
                    "error": "unknown_version",
                    "detail": str(payload.get("version")),
                }
            if record.status != Status.CANDIDATE:
                return {"ok": False, "error": "not_a_candidate", "detail": record.status.value}
            self.registry.set_status(version, Status.CHALLENGER)
            self._load_slot(challenger_slot, version)
            self._flip(PHASE1_SPLIT_BP, champion_slot, True)
            return {"ok": True, "split_bp": PHASE1_SPLIT_BP, "challenger": str(version)}
        if not has_challenger:
            return {"ok": False, "error": "no_rollout"}
        challenger = int(self.shm.control["slot_model"][challenger_slot])
        if kind == "pause":
            self.paused = True
            return {"ok": True, "split_bp": split}
        if kind == "resume":
            self.paused = False
            return {"ok": True, "split_bp": split}
        if kind == "rollback":
            self._flip(0, champion_slot, False)  # first, before anything slow
            self.registry.set_status(challenger, Status.FAILED, "manual rollback")
            return {"ok": True, "split_bp": 0}
        if kind == "promote":
            old = int(self.shm.control["slot_model"][champion_slot])
            self._flip(0, challenger_slot, False)
            self.registry.set_status(challenger, Status.CHAMPION, "promoted")
            self.registry.set_status(old, Status.RETIRED, f"replaced by {challenger}")
            return {"ok": True, "champion": str(challenger)}
        return {"ok": False, "error": "unknown_command"}


def run(config: Config, tick_s: float = 1.0) -> None:
    """Evaluator process entry point; runs until SIGTERM or SIGINT."""
    shm = SharedMemory.attach(config.state_path)
    shm.control["evaluator_pid"] = os.getpid()
    evaluator = Evaluator(config, shm)
    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    next_tick = time.monotonic()
    while not stop:
        evaluator.tick()
        next_tick += tick_s
        time.sleep(max(0.0, next_tick - time.monotonic()))


def prepare(config: Config) -> SharedMemory:
    geometry = Geometry(config.serve.max_workers, config.segments.n_cells, config.n_buckets)
    Path(config.state_path).mkdir(parents=True, exist_ok=True)
    return SharedMemory.open(config.state_path, geometry)
