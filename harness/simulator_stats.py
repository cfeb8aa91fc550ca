"""What a simulator run saw: answers by arm, events, lateness, latency and a timeline.

`SimStats` is filled in place by `harness.simulator` while it runs (so an `on_tick` callback sees
it live) and is JSON-ready through `to_dict()`. `first_time_all_champion` reads the timeline: how
long after a challenger went bad the client saw only champion answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hdrh.histogram import HdrHistogram

ARMS = ("champion", "challenger")
# The run fell behind when more than this share of its requests went out late (or any unsent).
LATE_SHARE = 0.01


@dataclass
class ArmStats:
    """What one arm served: answers, impressions and clicks posted, true CTR of shown ads."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    true_ctr_sum: float = 0.0  # expected clicks of the ads shown

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def true_ctr(self) -> float:
        return self.true_ctr_sum / self.impressions if self.impressions else 0.0


class Tick(NamedTuple):
    """Answers that arrived in [t, t + timeline_s) after the start, by serving arm."""

    t: float
    champion: int  # served by the champion, fallbacks excluded
    challenger: int
    fallback: int  # routed to the challenger, answered by the champion


@dataclass
class SimStats:
    rate: float
    duration_s: float
    timeline_s: float = 1.0
    started_at: float = 0.0  # time.time() at the first intended send
    elapsed_s: float = 0.0
    scheduled: int = 0  # intended sends before the end (or the stop)
    sent: int = 0
    returned: int = 0  # /predict requests back, answered or failed
    answered: int = 0
    arms: dict[str, ArmStats] = field(default_factory=lambda: {a: ArmStats() for a in ARMS})
    fallbacks: dict[str, int] = field(default_factory=dict)  # by the answer's reason
    errors: dict[str, int] = field(default_factory=dict)  # "predict 503 model_unavailable", ...
    events_posted: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    event_errors: dict[str, int] = field(default_factory=dict)  # by the server's reason
    late: int = 0  # sent more than late_ms after their intended time
    capped: int = 0  # held back because max_in_flight requests were outstanding
    max_lag_ms: float = 0.0
    unsent: int = 0  # scheduled, never sent: the simulator could not keep the rate
    unanswered: int = 0
    buckets: list[list[int]] = field(default_factory=list, repr=False)
    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(1, 60_000_000, 3), repr=False
    )

    @property
    def fell_behind(self) -> bool:
        return self.unsent > 0 or self.late > LATE_SHARE * max(self.sent, 1)

    @property
    def timeline(self) -> list[Tick]:
        return [Tick(i * self.timeline_s, *b) for i, b in enumerate(self.buckets)]

    @property
    def latency_ms(self) -> dict[str, float | None]:
        """Latency from intended send time to the answer's last byte, every HTTP answer."""
        h = self.histogram
        if h.get_total_count() == 0:
            return {"p50": None, "p99": None, "p99.9": None, "max": None}
        v = h.get_percentile_to_value_dict([50.0, 99.0, 99.9])
        return {"p50": v[50.0] / 1000, "p99": v[99.0] / 1000, "p99.9": v[99.9] / 1000,
                "max": h.get_max_value() / 1000}  # fmt: skip

    def first_time_all_champion(self, after_s: float = 0.0) -> float | None:
        """Start of the first timeline bucket at or after `after_s` (seconds from the start)
        from which on every answer came from the champion (no challenger, no fallback)."""
        found = None
        for tick in self.timeline:
            if tick.t + self.timeline_s <= after_s:
                continue
            if tick.challenger or tick.fallback:
                found = None
            elif found is None and tick.champion:
                found = max(tick.t, after_s)
        return found

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("arms", "buckets", "histogram")}
        out["arms"] = {
            a: dict(vars(s), ctr=s.ctr, true_ctr=s.true_ctr) for a, s in self.arms.items()
        }
        out.update(fell_behind=self.fell_behind, latency_ms=self.latency_ms)
        out["timeline"] = [list(t) for t in self.timeline]
        return out
