"""Synthetic traffic written straight into a state file's worker slabs: what the evaluator's
tick-time benchmark (`bench.evaluator_tick`) evaluates, without HTTP or workers."""

from __future__ import annotations

from functools import reduce

import numpy as np

from router import control, hdr, layout, snapshot
from router.config import Config
from router.layout import Counter
from router.shared_memory import SharedMemory


class SyntheticWorkers:
    """Stands in for `n` HTTP workers: stretches of traffic at `rate` requests/s (split as
    the control word says) added to each worker's slab with NumPy, into the same fields
    the workers' numba kernels write. Both arms are healthy and calibrated; the challenger's
    CTR is `lift` times the champion's in every cell, so no guardrail breaks."""

    ERROR_RATE = 2e-4
    CANDIDATES = 5

    def __init__(
        self, shm: SharedMemory, config: Config, n: int, rate: float, lift: float = 1.03
    ) -> None:
        self.shm, self.n, self.rate, self.lift = shm, n, rate, lift
        self.rng = np.random.default_rng(11)
        rng = self.rng
        slots = shm.slabs["slots"]
        self.fields = {name: slots[name] for name in snapshot._SLOT_FIELDS}
        # A cell's share of traffic and its CTR: products of per-dimension factors.
        shares = [rng.uniform(0.75, 1.25, len(v)) for v in config.segments.values]
        self.cell_share = reduce(np.multiply.outer, [s / s.sum() for s in shares]).ravel()
        lifts = [rng.uniform(0.8, 1.2, len(v)) for v in config.segments.values]
        factor = reduce(np.multiply.outer, lifts).ravel()
        self.cell_ctr = 0.02 * factor / float(self.cell_share @ factor)
        # Predictions: Beta(2, 90) with a little uniform mass, so every bin sees some.
        centres = (np.arange(layout.N_PRED_BINS) + 0.5) / layout.N_PRED_BINS
        self.centres = centres
        density = centres * (1 - centres) ** 89
        self.pred_p = 0.999 * density / density.sum() + 0.001 / layout.N_PRED_BINS
        bucket_of = np.minimum(
            (centres / config.bucket_width).astype(np.int64), config.n_buckets - 1
        )
        self.bucket_p = np.bincount(bucket_of, self.pred_p, config.n_buckets)
        shown = np.bincount(bucket_of, self.pred_p * centres, config.n_buckets)
        self.bucket_ctr = shown / self.bucket_p  # the mean prediction shown in each bucket
        # Latency: log-normal around 0.4 ms (p99 ~1.3 ms), as HDR bucket indices.
        sample = rng.lognormal(np.log(400.0), 0.5, 20_000).astype(np.int64) + 1
        index = np.array([hdr.counts_index(int(v)) for v in sample])
        self.lat_index, counts = np.unique(index, return_counts=True)
        self.lat_p = counts / counts.sum()

    def sync(self) -> None:
        """What every worker's ticker does: acknowledge the slots (zeroing new ones), beat."""
        slabs, ctrl = self.shm.slabs, self.shm.control
        for w in range(self.n):
            for s in range(layout.N_SLOTS):
                if int(slabs["slot_seq"][w, s]) != int(ctrl["slot_seq"][s]):
                    for f in self.fields.values():
                        f[w, s] = 0
                    slabs["slot_seq"][w, s] = ctrl["slot_seq"][s]
            slabs["heartbeat_ns"][w] = control.beat_ns()

    def clicked_share(self) -> float:
        """The share of (worker, slot, cell) entries with at least one click."""
        return round(float((self.fields["seg_events"][: self.n, ..., 1] > 0).mean()), 4)

    def add(self, seconds: float) -> None:
        split, champion, has_challenger, _ = control.unpack(self.shm.control_word())
        total = round(self.rate * seconds)
        challenger = round(total * split / layout.BASIS_POINTS) if has_challenger else 0
        for slot, n, lift in ((champion, total - challenger, 1.0),
                              (1 - champion, challenger, self.lift)):  # fmt: skip
            for w in range(self.n):
                self._record(w, slot, n // self.n + (w < n % self.n), lift)
        self.sync()

    def _record(self, w: int, slot: int, n: int, lift: float) -> None:
        if n <= 0:
            return
        rng, f = self.rng, self.fields
        requests = rng.multinomial(n, self.cell_share)
        errors = rng.binomial(requests, self.ERROR_RATE)
        ctr = self.cell_ctr * lift
        counters = f["counters"][w, slot]
        counters[Counter.REQUESTS] += n
        counters[Counter.CANDIDATES] += n * self.CANDIDATES
        counters[Counter.ERR_RAISED] += int(errors.sum())
        f["latency"][w, slot][self.lat_index] += rng.multinomial(n, self.lat_p)
        hist = rng.multinomial(n * self.CANDIDATES, self.pred_p)
        f["pred_hist"][w, slot] += hist
        # Every request paired (router.paired), the challenger agreeing with the champion.
        s, q = float(hist @ self.centres), float(hist @ self.centres**2)
        f["paired"][w, slot] += [hist.sum(), s, s, q, q, q]
        counters[Counter.PAIRED] += n
        f["seg_requests"][w, slot][:, 0] += requests
        f["seg_requests"][w, slot][:, 1] += errors
        # One impression per answered request, clicked with the cell's CTR.
        f["seg_events"][w, slot][:, 0] += requests
        f["seg_events"][w, slot][:, 1] += rng.binomial(requests, np.minimum(ctr, 1.0))
        f["seg_pred_sum"][w, slot] += requests * ctr
        shown = rng.multinomial(n, self.bucket_p)
        f["bucket_events"][w, slot][:, 0] += shown
        f["bucket_events"][w, slot][:, 1] += rng.binomial(shown, self.bucket_ctr)
        f["bucket_pred_sum"][w, slot] += shown * self.bucket_ctr
