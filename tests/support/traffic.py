"""Crafted traffic: counts written into a real shared-memory file through the same numba
kernels the workers use, standing in for a worker process (for the evaluator and snapshot
tests, which need known counts without a server)."""

from __future__ import annotations

import numpy as np

from router import control, layout, paired, recording
from router.config import Config
from router.shared_memory import SharedMemory


class Traffic:
    """Plays worker `index`: acknowledges slots and records requests and events."""

    def __init__(self, shm: SharedMemory, config: Config, index: int = 0) -> None:
        self.shm = shm
        self.config = config
        self.index = index
        self.tables = layout.table_words(config.segments.n_cells, config.n_buckets)
        self.rng = np.random.default_rng(7)

    def sync(self) -> None:
        """What a worker's ticker does: acknowledge slots (zeroing new ones), heartbeat."""
        s = self.shm.slabs[self.index]
        ctrl = self.shm.control
        for slot in range(layout.N_SLOTS):
            if int(s["slot_seq"][slot]) != int(ctrl["slot_seq"][slot]):
                s["slots"][slot] = np.zeros((), dtype=s["slots"].dtype)
                s["slot_seq"][slot] = ctrl["slot_seq"][slot]
        s["heartbeat_ns"] = control.beat_ns()

    def slot(self, arm: str) -> int:
        _, champion, _, _ = control.unpack(self.shm.control_word())
        return champion if arm == "champion" else 1 - champion

    def requests(
        self,
        arm: str,
        n: int,
        *,
        latency_us: int = 800,
        errors: int = 0,
        cell: int = 0,
        predictions: np.ndarray | None = None,
    ) -> None:
        """Challenger requests are paired as a worker pairs them (router.paired): the
        champion scores each one's row too, the same value as a healthy challenger's, a
        value of its own when `predictions` are given."""
        addr = self.shm.slot_address(self.index, self.slot(arm))
        for i in range(n):
            error = 1 if i < errors else 0
            if error:
                recording.bump(addr, layout.Counter.ERR_RAISED)
            else:
                champion = np.array([self.rng.beta(2, 90)])
                out = champion if predictions is None else predictions[i % len(predictions)]
                out = out.reshape(1)
                recording.record_predictions(addr, out)
                if arm == "challenger" and 0 <= out[0] <= 1:
                    paired.record_pairs(addr, champion, out)
                    recording.bump(addr, layout.Counter.PAIRED)
            recording.record_request(addr, latency_us, cell, error)

    def events(
        self, arm: str, impressions: int, clicks: int, *, prediction: float = 0.02, cell: int = 0
    ) -> None:
        addr = self.shm.slot_address(self.index, self.slot(arm))
        bucket = min(int(prediction / self.config.bucket_width), self.config.n_buckets - 1)
        for _ in range(impressions):
            recording.record_event(addr, self.tables, cell, bucket, 0, prediction)
        for _ in range(clicks):
            recording.record_event(addr, self.tables, cell, bucket, 1, prediction)
