"""Crafted guardrail inputs: one arm's slot record filled field by field (what the workers'
kernels would have summed into it), measured into `ArmMetrics`, paired into `Evidence`."""

from __future__ import annotations

import numpy as np

from guardrails import checks
from guardrails.measures import ArmMetrics, SegmentCodes, measure
from guardrails.policy import Policy
from router import hdr, layout
from router.config import Config
from router.paired import pair_sums_reference
from router.snapshot import SlotTotals

CONFIG = Config.from_dict({})
CODES = SegmentCodes(CONFIG.segments)
POLICY = Policy()
FIELDS = tuple(SlotTotals.__dataclass_fields__)


def cell(**segment: str) -> int:
    """The counter cell of a segment; dimensions not named are `other`."""
    return CONFIG.segments.cell(segment)


NEWS_MOBILE = cell(
    publisher_category="news", device_type="mobile", country_tier="tier1", creative_type="banner"
)


def zero_totals(n_cells: int, n_buckets: int) -> SlotTotals:
    record = np.zeros((), dtype=layout.slot_dtype(n_cells, n_buckets))
    return SlotTotals(**{name: record[name].copy() for name in FIELDS})


class Slot:
    """One arm's counters. Methods add to them and return self, so arms read as a sentence."""

    def __init__(self, config: Config = CONFIG) -> None:
        self.config = config
        self.t = zero_totals(config.segments.n_cells, config.n_buckets)

    def requests(
        self, n: int, *, errors: int = 0, latency_us: int = 800, cell: int = NEWS_MOBILE
    ) -> Slot:
        self.t.counters[layout.Counter.REQUESTS] += n
        self.t.counters[layout.Counter.ERR_RAISED] += errors
        self.t.latency[hdr.counts_index(latency_us)] += n
        self.t.seg_requests[cell] += (n, errors)
        return self

    def predictions(self, values: np.ndarray) -> Slot:
        """Served predictions: good ones into the histogram, NaN / out-of-range counted."""
        good = values[(values >= 0.0) & (values <= 1.0)]
        bad = values.size - good.size
        self.t.counters[layout.Counter.CANDIDATES] += good.size
        self.t.counters[layout.Counter.OUT_OF_RANGE_PREDICTIONS] += bad
        bins = np.minimum((good * layout.N_PRED_BINS).astype(np.int64), layout.N_PRED_BINS - 1)
        np.add.at(self.t.pred_hist, bins, 1)
        return self

    def pairs(self, champion: np.ndarray, challenger: np.ndarray) -> Slot:
        """Rows both arms scored (router.paired), one request each."""
        self.t.paired[:] += pair_sums_reference(champion, challenger)
        self.t.counters[layout.Counter.PAIRED] += champion.size
        return self

    def events(
        self, impressions: int, clicks: int, *, prediction: float = 0.02, cell: int = NEWS_MOBILE
    ) -> Slot:
        """Impressions all shown at `prediction`, and clicks on them."""
        bucket = min(int(prediction / self.config.bucket_width), self.config.n_buckets - 1)
        self.t.seg_events[cell] += (impressions, clicks)
        self.t.seg_pred_sum[cell] += impressions * prediction
        self.t.bucket_events[bucket] += (impressions, clicks)
        self.t.bucket_pred_sum[bucket] += impressions * prediction
        return self

    def totals(self) -> SlotTotals:
        return SlotTotals(**{name: getattr(self.t, name).copy() for name in FIELDS})

    def metrics(self) -> ArmMetrics:
        return measure(self.totals(), CODES)


def served(n: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Realistic predicted CTRs (mean ~2%), optionally shifted up."""
    return np.random.default_rng(seed).beta(2.0, 90.0, n) + shift


def healthy(scale: int = 1, seed: int = 0) -> Slot:
    """An arm that passes every guardrail: no errors, 0.8 ms, calibrated, CTR 2%, and (as a
    challenger) the champion's predictions on the rows it paired."""
    predictions = served(5_000 * scale, seed)
    return (
        Slot()
        .requests(5_000 * scale)
        .predictions(predictions)
        .pairs(predictions[:1000], predictions[:1000])
        .events(20_000 * scale, 400 * scale)
    )


def evidence(
    champion: Slot,
    challenger: Slot,
    *,
    policy: Policy = POLICY,
    recent: Slot | None = None,
    phase_requests: tuple[int, int] | None = None,
    split_bp: int = 300,
    time_in_phase_s: float = 0.0,
    total_s: float = 0.0,
) -> checks.Evidence:
    if phase_requests is None:  # requests in exactly the split's proportion
        phase_requests = (100_000 - 10 * split_bp, 10 * split_bp)
    return checks.gather(
        policy,
        champion.metrics(),
        challenger.metrics(),
        recent.metrics() if recent is not None else None,
        phase_requests,
        split_bp,
        time_in_phase_s,
        total_s,
    )
