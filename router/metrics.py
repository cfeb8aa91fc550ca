"""Prometheus text exposition of a snapshot, summed over all workers."""

from __future__ import annotations

from router import hdr, layout
from router.layout import Counter
from router.models import Model
from router.snapshot import Snapshot

# Latency histogram buckets (seconds) exported from the HDR counts.
LATENCY_BUCKETS_US = (250, 500, 1000, 2000, 5000, 10_000, 25_000, 50_000, 100_000, 1_000_000)
_ERRORS = {
    Counter.ERR_RAISED: "raised",
    Counter.ERR_TIMEOUT: "timeout",
    Counter.ERR_NAN: "nan",
    Counter.ERR_RANGE: "out_of_range",
    Counter.ERR_FEATURES: "features",
}


def _bucket_edges() -> list[int]:
    # The first counts index whose values all exceed each bound.
    return [hdr.python_counts_index(b) + 1 for b in LATENCY_BUCKETS_US]


_EDGES = _bucket_edges()


def render(snapshot: Snapshot, models: list[Model | None], stale: bool) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")

    arms = []
    for arm, slot in (
        ("champion", snapshot.champion_slot),
        ("challenger", 1 - snapshot.champion_slot),
    ):
        model = models[slot]
        if model is not None and snapshot.slot_model[slot] == model.version:
            arms.append((f'arm="{arm}",model_version="{model.version}"', snapshot.slots[slot]))

    family("rampart_requests_total", "counter", "Requests assigned to each arm.")
    for labels, t in arms:
        lines.append(f"rampart_requests_total{{{labels}}} {t.counter(Counter.REQUESTS)}")
    family("rampart_predictions_total", "counter", "Predictions served by each arm's model.")
    for labels, t in arms:
        lines.append(f"rampart_predictions_total{{{labels}}} {t.counter(Counter.CANDIDATES)}")
    family("rampart_model_errors_total", "counter", "Model failures by kind.")
    for labels, t in arms:
        for counter, kind in _ERRORS.items():
            lines.append(
                f'rampart_model_errors_total{{{labels},kind="{kind}"}} {t.counter(counter)}'
            )
    family("rampart_fallbacks_total", "counter", "Challenger requests answered by the champion.")
    for labels, t in arms:
        lines.append(f"rampart_fallbacks_total{{{labels}}} {t.counter(Counter.FALLBACKS)}")
    family("rampart_events_total", "counter", "Outcome events counted, by type.")
    for labels, t in arms:
        lines.append(f'rampart_events_total{{{labels},type="impression"}} {t.impressions}')
        lines.append(f'rampart_events_total{{{labels},type="click"}} {t.clicks}')
    family("rampart_request_duration_seconds", "histogram", "Server-side /predict latency.")
    for labels, t in arms:
        cumulative = t.latency.cumsum()
        total = int(cumulative[-1]) if cumulative.size else 0
        for bound, edge in zip(LATENCY_BUCKETS_US, _EDGES, strict=True):
            le = bound / 1e6
            lines.append(
                f'rampart_request_duration_seconds_bucket{{{labels},le="{le:g}"}} '
                f"{int(cumulative[min(edge, cumulative.size) - 1])}"
            )
        lines.append(f'rampart_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}')
        lines.append(f"rampart_request_duration_seconds_count{{{labels}}} {total}")
    family("rampart_rejected_total", "counter", "Bad input rejected, by reason.")
    for reason, n in zip(layout.REJECT_REASONS, snapshot.rejects, strict=True):
        lines.append(f'rampart_rejected_total{{reason="{reason}"}} {int(n)}')
    family("rampart_split_basis_points", "gauge", "Challenger share of traffic (control word).")
    lines.append(
        f"rampart_split_basis_points {snapshot.split_bp if snapshot.has_challenger else 0}"
    )
    family("rampart_evaluator_stale", "gauge", "1 while the evaluator heartbeat is stale.")
    lines.append(f"rampart_evaluator_stale {int(stale)}")
    family("rampart_workers", "gauge", "Workers with a fresh heartbeat.")
    lines.append(f"rampart_workers {snapshot.live_workers}")
    return "\n".join(lines) + "\n"
