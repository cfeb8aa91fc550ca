"""A state directory as a live evaluator keeps it, for a worker run in the test's process.

    config, shm = served_state(tmp, [champion_path, challenger_path], split_bp=5000)
    worker = Worker(config)

The models are registered (versions 1, 2, ...) and loaded into slots 0, 1, ...; the split is
set (the challenger, if any, in slot 1); the heartbeat is written once, with a stale timeout
of an hour so the route stays as a live evaluator's would for the whole test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from guardrails.evaluator import prepare
from router.config import Config
from router.control import ControlWriter
from router.registry import Registry
from router.shared_memory import SharedMemory


def served_state(
    tmp: Path, models: Sequence[Path], *, split_bp: int = 0
) -> tuple[Config, SharedMemory]:
    config = Config.from_dict({"serve": {"state_dir": str(tmp / "state"), "stale_after_s": 3600.0}})
    registry = Registry(config.state_path)
    for path in models:
        registry.register(path)
    registry.close()
    shm = prepare(config)
    control = ControlWriter(shm)
    control.claim(os.getpid())
    for slot in range(len(models)):
        control.load_slot(slot, slot + 1)
    control.flip(split_bp, 0, len(models) > 1)
    control.beat()
    return config, shm
