"""Prometheus text exposition: the workers' slabs summed into one snapshot, plus
the evaluator's view of the rollout read from its status file.

Names follow Prometheus conventions: base units in the name (`_seconds`,
`_ratio`), `_total` on counters, latency as a histogram per arm. Families are
always declared, even before the evaluator has written anything, so dashboards
and alert rules can name them from the start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from router import hdr, layout
from router.layout import BASIS_POINTS, Counter
from router.models import Model
from router.snapshot import SlotTotals, Snapshot

# Upper bounds (µs) of the exported latency buckets; 10 ms is the phase-1 p99 guardrail.
LATENCY_BUCKETS_US = (
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
)
GUARDRAIL_STATE = {"pass": 1, "waiting": 0, "fail": -1}
ROLLOUT_STATES = ("idle", "loading", "running", "paused", "promoted", "rolled_back", "stopped")
_ERRORS = {
    Counter.ERR_RAISED: "raised",
    Counter.ERR_TIMEOUT: "timeout",
    Counter.ERR_NAN: "nan",
    Counter.ERR_RANGE: "out_of_range",
    Counter.ERR_FEATURES: "features",
}
_COUNTERS = (
    ("rampart_rollbacks_total", "rollbacks", "Rollouts rolled back (evaluator's count)."),
    ("rampart_promotions_total", "promotions", "Challengers promoted (evaluator's count)."),
    ("rampart_rollout_stops_total", "stops", "Rollouts stopped by an operator."),
)


def _bucket_edges() -> list[int]:
    # Counts up to and including the HDR index that holds each bound (HDR resolution:
    # a bound above 2048 µs may take in values up to 0.1% above it).
    return [hdr.python_counts_index(b) + 1 for b in LATENCY_BUCKETS_US]


def midpoints_us() -> np.ndarray:
    """The midpoint of every HDR counts index's value range, in µs.

    Mirrors `hdr.value_from_index` and `hdr.highest_equivalent_value`, vectorised:
    the slabs keep counts only, so a histogram's sum is estimated from them.
    """
    i = np.arange(hdr.COUNTS_LEN, dtype=np.int64)
    bucket = (i >> hdr.HALF_COUNT_MAGNITUDE) - 1
    sub = (i & (hdr.SUB_BUCKET_HALF_COUNT - 1)) + hdr.SUB_BUCKET_HALF_COUNT
    first = bucket < 0
    sub[first] -= hdr.SUB_BUCKET_HALF_COUNT
    bucket[first] = 0
    shift = bucket + hdr.UNIT_MAGNITUDE
    return (sub << shift) + ((np.int64(1) << shift) - 1) / 2


_EDGES = _bucket_edges()
_MIDPOINTS_US = midpoints_us()


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float | int, labels: dict[str, Any] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")


def render(
    snapshot: Snapshot,
    models: list[Model | None],
    *,
    stale: bool,
    effective_split_bp: int,
    status: dict[str, Any] | None = None,
) -> str:
    """The `/metrics` text. `status` is the evaluator's status file (None before it writes one)."""
    out = _Text()
    labels_info: list[dict[str, Any]] = []
    arms: list[tuple[dict[str, Any], SlotTotals]] = []
    for arm, slot in (
        ("champion", snapshot.champion_slot),
        ("challenger", 1 - snapshot.champion_slot),
    ):
        model = models[slot]
        if model is not None and snapshot.slot_model[slot] == model.version:
            labels = {"arm": arm, "model_version": model.version}
            arms.append((labels, snapshot.slots[slot]))
            labels_info.append({**labels, "model": model.label})
    out.family("rampart_model_info", "gauge", "The model serving each arm (always 1).")
    for info in labels_info:
        out.sample("rampart_model_info", 1, info)
    _serving(out, arms)
    _latency(out, arms)
    out.family("rampart_rejected_total", "counter", "Bad input rejected with a 4xx, by reason.")
    for reason, n in zip(layout.REJECT_REASONS, snapshot.rejects, strict=True):
        out.sample("rampart_rejected_total", int(n), {"reason": reason})
    _rollout(out, snapshot, effective_split_bp, status or {})
    out.family("rampart_evaluator_stale", "gauge", "1 while the evaluator heartbeat is stale.")
    out.sample("rampart_evaluator_stale", int(stale))
    out.family(
        "rampart_evaluator_heartbeat_age_seconds", "gauge", "Time since the evaluator's heartbeat."
    )
    if snapshot.heartbeat_ns > 0:
        age = max(snapshot.taken_ns - snapshot.heartbeat_ns, 0) / 1e9
        out.sample("rampart_evaluator_heartbeat_age_seconds", age)
    out.family("rampart_workers", "gauge", "Workers with a fresh heartbeat.")
    out.sample("rampart_workers", snapshot.live_workers)
    return "\n".join(out.lines) + "\n"


def _serving(out: _Text, arms: list[tuple[dict[str, Any], SlotTotals]]) -> None:
    out.family("rampart_requests_total", "counter", "Requests assigned to each arm.")
    for labels, t in arms:
        out.sample("rampart_requests_total", t.counter(Counter.REQUESTS), labels)
    out.family("rampart_predictions_total", "counter", "Predictions served by each arm's model.")
    for labels, t in arms:
        out.sample("rampart_predictions_total", t.counter(Counter.CANDIDATES), labels)
    out.family("rampart_model_errors_total", "counter", "Model failures by kind.")
    for labels, t in arms:
        for counter, kind in _ERRORS.items():
            out.sample("rampart_model_errors_total", t.counter(counter), {**labels, "kind": kind})
    out.family(
        "rampart_fallbacks_total", "counter", "Challenger requests answered by the champion."
    )
    for labels, t in arms:
        out.sample("rampart_fallbacks_total", t.counter(Counter.FALLBACKS), labels)
    out.family("rampart_events_total", "counter", "Outcome events counted, by type.")
    for labels, t in arms:
        out.sample("rampart_events_total", t.impressions, {**labels, "type": "impression"})
        out.sample("rampart_events_total", t.clicks, {**labels, "type": "click"})


def _latency(out: _Text, arms: list[tuple[dict[str, Any], SlotTotals]]) -> None:
    name = "rampart_predict_latency_seconds"
    out.family(
        name,
        "histogram",
        "Server-side /predict latency from the HDR counts (3 significant digits); "
        "_sum is estimated from the midpoints of the HDR buckets.",
    )
    for labels, t in arms:
        cumulative = t.latency.cumsum()
        total = int(cumulative[-1]) if cumulative.size else 0
        for bound, edge in zip(LATENCY_BUCKETS_US, _EDGES, strict=True):
            count = int(cumulative[min(edge, cumulative.size) - 1])
            out.sample(f"{name}_bucket", count, {**labels, "le": f"{bound / 1e6:g}"})
        out.sample(f"{name}_bucket", total, {**labels, "le": "+Inf"})
        out.sample(f"{name}_sum", float(t.latency @ _MIDPOINTS_US) / 1e6, labels)
        out.sample(f"{name}_count", total, labels)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rollout(out: _Text, snapshot: Snapshot, effective_bp: int, status: dict[str, Any]) -> None:
    rollout = status.get("rollout") if isinstance(status.get("rollout"), dict) else None
    split = snapshot.split_bp if snapshot.has_challenger else 0
    out.family("rampart_split_ratio", "gauge", "Challenger share of traffic (the control word).")
    out.sample("rampart_split_ratio", split / BASIS_POINTS)
    out.family(
        "rampart_effective_split_ratio",
        "gauge",
        "Challenger share this worker routes (0 while the evaluator is stale).",
    )
    out.sample("rampart_effective_split_ratio", effective_bp / BASIS_POINTS)
    phase = _finite(status.get("phase"))
    if phase is None and rollout is not None:
        phase = _finite(rollout.get("phase"))
    out.family("rampart_rollout_phase", "gauge", "Rollout phase: 0 = no rollout, 1-5.")
    out.sample("rampart_rollout_phase", int(phase or 0))
    state = status.get("state") or ("running" if rollout else "idle")
    out.family("rampart_rollout_state", "gauge", "1 for the rollout's current state.")
    for s in ROLLOUT_STATES:
        out.sample("rampart_rollout_state", int(s == state), {"state": s})
    out.family("rampart_rollout_phase_elapsed_seconds", "gauge", "Time spent in the phase.")
    if rollout is not None and (elapsed := _finite(rollout.get("time_in_phase_s"))) is not None:
        out.sample("rampart_rollout_phase_elapsed_seconds", elapsed)
    out.family("rampart_rollout_info", "gauge", "The rollout in progress (always 1).")
    if rollout is not None:
        info = {k: rollout.get(k, "") for k in ("champion", "challenger")}
        out.sample("rampart_rollout_info", 1, {"rollout_id": rollout.get("id", ""), **info})
    _guardrails(out, status.get("guardrails"))
    comparison = _mapping(status.get("comparison"))
    for name, key, help_ in (
        ("rampart_challenger_better_probability", "p_better", "P(challenger CTR > champion's)."),
        ("rampart_challenger_worse_probability", "p_worse", "P(challenger CTR < champion's)."),
        ("rampart_challenger_uplift_ratio", "uplift", "Expected relative CTR uplift."),
    ):
        out.family(name, "gauge", help_)
        if (value := _finite(comparison.get(key))) is not None:
            out.sample(name, value)
    counters = _mapping(status.get("counters"))
    for name, key, help_ in _COUNTERS:
        out.family(name, "counter", help_)
        out.sample(name, int(_finite(counters.get(key)) or 0))


def _guardrails(out: _Text, guardrails: Any) -> None:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for g in guardrails if isinstance(guardrails, list) else []:
        if isinstance(g, dict) and g.get("name"):
            rows[(str(g["name"]), str(g.get("phase", "")))] = g  # a repeated name: the last wins
    out.family(
        "rampart_guardrail_state", "gauge", "Guardrail state: 1 pass, 0 waiting for data, -1 fail."
    )
    for (name, phase), g in rows.items():
        value = GUARDRAIL_STATE.get(str(g.get("state")), 0)
        out.sample("rampart_guardrail_state", value, {"guardrail": name, "phase": phase})
    out.family("rampart_guardrail_value", "gauge", "A guardrail's current value (numeric ones).")
    for (name, phase), g in rows.items():
        if (number := _finite(g.get("value"))) is not None:
            out.sample("rampart_guardrail_value", number, {"guardrail": name, "phase": phase})
