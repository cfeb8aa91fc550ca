"""Paired scoring: on challenger requests the champion also scores the same rows.

Two models' predictions on identical inputs say at once what two arms' separate traffic
says only after hundreds of predictions: a challenger whose outputs do not move where the
champion's do (constant, collapsed) or move unlike them (a feature-order or scaling bug).

The worker hands `Pairing.offer` the rows and the challenger's valid predictions of a
challenger answer; `router.app` runs `Pairing.score` after that answer is sent, so the
champion's run is never in the challenger answer's latency. Sampled evenly (`[paired]
fraction`) and capped per worker (`max_per_s`, a token bucket), so a flood adds at most
that many champion runs a second. The sums (`layout.N_PAIRED`) go into the challenger's
slot, which is zeroed with the slot: they are always this challenger's pairs, and the
evaluator sums them over workers (guardrails.paired judges them).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from router import layout, recording
from router.config import PairedConfig
from router.layout import Counter
from router.rate_cap import RateCap

_PAIRED = layout.PAIRED_WORD
_N = layout.N_PAIRED
# Typed as Any, as in router.recording: mypy cannot see through numba's intrinsic.
_float64_at: Any = recording._float64_at


@numba.njit(cache=True)
def record_pairs(slot_addr: int, champion: np.ndarray, challenger: np.ndarray) -> int:
    """Add one request's pairs to the slot's sums. The challenger's values were validated
    when they were served; the champion's are checked here: 1 (and nothing added) if any
    is not a probability or the two outputs differ in size, else 0."""
    b = champion.ravel()
    c = challenger.ravel()
    if b.size != c.size:
        return 1
    for v in b:
        if not (v >= 0.0 and v <= 1.0):
            return 1
    f = numba.carray(_float64_at(slot_addr), (_PAIRED + _N,))
    for i in range(b.size):
        x = np.float64(b[i])  # float() would keep a float32 and square it in float32
        y = np.float64(c[i])
        f[_PAIRED] += 1.0
        f[_PAIRED + 1] += x
        f[_PAIRED + 2] += y
        f[_PAIRED + 3] += x * x
        f[_PAIRED + 4] += y * y
        f[_PAIRED + 5] += x * y
    return 0


def pair_sums_reference(champion: np.ndarray, challenger: np.ndarray) -> np.ndarray:
    """What `record_pairs` adds, in NumPy."""
    b = champion.ravel().astype(np.float64)
    c = challenger.ravel().astype(np.float64)
    return np.array([b.size, b.sum(), c.sum(), b @ b, c @ c, b @ c])


# A kept challenger request: (route word, champion model, challenger slot address, rows,
# challenger output)
Pair = tuple[int, Any, int, np.ndarray, np.ndarray]


class Pairing:
    """One worker's paired scoring: which challenger requests to pair, and pairing them."""

    def __init__(self, config: PairedConfig) -> None:
        self.on = config.on
        self.fraction = config.fraction
        self.max_split_bp = config.max_split_bp
        self.cap = RateCap(config.max_per_s)
        self.credit = 0.0
        self.pending: Pair | None = None

    def offer(
        self, word: int, split_bp: int, champion: Any, addr: int, x: np.ndarray, out: np.ndarray
    ) -> None:
        """A challenger answer with valid predictions `out` on rows `x` (in the champion's
        feature order): keep it for `score` if sampled and under the rate cap."""
        if split_bp > self.max_split_bp:
            return
        self.credit += self.fraction
        if self.credit < 1.0:
            return
        self.credit -= 1.0
        if not self.cap.take():
            recording.bump(addr, Counter.PAIRS_DROPPED)
            return
        self.pending = (word, champion, addr, x, out)

    def score(self, pair: Pair, word: int) -> None:
        """Run the champion on a kept request's rows and add the pairs. `word` is the control
        word now: a request from before a change of split or slots is dropped, since its
        slot may hold another challenger by now. Never raises: the answer is already sent."""
        then, champion, addr, x, out = pair
        if word != then:
            recording.bump(addr, Counter.PAIRS_DROPPED)
            return
        try:
            base = champion.predict(x)
        except Exception:
            recording.bump(addr, Counter.PAIRS_DROPPED)
            return
        if record_pairs(addr, base, out):
            recording.bump(addr, Counter.PAIRS_DROPPED)
            return
        recording.bump(addr, Counter.PAIRED)
