"""Prometheus exposition: the workers' slabs summed into one snapshot, plus the
evaluator's view of the rollout read from its status file, as a prometheus_client
custom collector rendered with `generate_latest`.

Names follow Prometheus conventions: base units in the name (`_seconds`,
`_ratio`), `_total` on counters, latency as a histogram per arm. Families are
always declared, even before the evaluator has written anything, so dashboards
and alert rules can name them from the start.

The worker keeps no prometheus_client metric objects: the counts live in the
slabs, so each scrape builds its families from one snapshot, on a private
registry (never the library's global one, which would add process metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

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
ARM_LABELS = ("arm", "model_version")
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
_COMPARISON = (
    ("rampart_challenger_better_probability", "p_better", "P(challenger CTR > champion's)."),
    ("rampart_challenger_worse_probability", "p_worse", "P(challenger CTR < champion's)."),
    ("rampart_challenger_uplift_ratio", "uplift", "Expected relative CTR uplift."),
)
# The `le` labels as they have always been written ("0.0001" ... "1"): series keep their identity.
_LE = (*(f"{b / 1e6:g}" for b in LATENCY_BUCKETS_US), "+Inf")


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


_EDGES = np.array(_bucket_edges())
_MIDPOINTS_US = midpoints_us()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _gauge(name: str, help_: str, value: float | None = None) -> GaugeMetricFamily:
    """A label-less gauge, declared even when it has no value yet."""
    family = GaugeMetricFamily(name, help_, labels=[])
    if value is not None:
        family.add_metric([], value)
    return family


class SnapshotCollector(Collector):
    """One scrape: the summed slabs and the evaluator's status file as metric families."""

    def __init__(
        self,
        snapshot: Snapshot,
        models: list[Model | None],
        *,
        stale: bool,
        effective_split_bp: int,
        status: Mapping[str, Any],
        dedupe_load: tuple[float, float] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.dedupe_load = dedupe_load
        self.stale = stale
        self.effective_split_bp = effective_split_bp
        self.status = status
        # (arm, model_version) label values, the model's label, its totals: arms whose slot
        # holds the model this worker has loaded (a slot mid-swap is left out).
        self.arms: list[tuple[list[str], str, SlotTotals]] = []
        for arm, slot in (
            ("champion", snapshot.champion_slot),
            ("challenger", 1 - snapshot.champion_slot),
        ):
            model = models[slot]
            if model is not None and snapshot.slot_model[slot] == model.version:
                self.arms.append(([arm, str(model.version)], model.label, snapshot.slots[slot]))

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "rampart_model_info",
            "The model serving each arm (always 1).",
            labels=[*ARM_LABELS, "model"],
        )
        for values, label, _ in self.arms:
            info.add_metric([*values, label], 1)
        yield info
        yield from self._serving()
        yield self._latency()
        rejected = CounterMetricFamily(
            "rampart_rejected_total", "Bad input rejected with a 4xx, by reason.", labels=["reason"]
        )
        for reason, n in zip(layout.REJECT_REASONS, self.snapshot.rejects, strict=True):
            rejected.add_metric([reason], int(n))
        yield rejected
        yield from self._rollout()
        yield from self._guardrails()
        yield from self._evaluator()
        yield from self._fleet()

    def _per_arm(self, name: str, help_: str, counter: Counter) -> CounterMetricFamily:
        family = CounterMetricFamily(name, help_, labels=list(ARM_LABELS))
        for values, _, t in self.arms:
            family.add_metric(values, t.counter(counter))
        return family

    def _serving(self) -> Iterator[Metric]:
        yield self._per_arm(
            "rampart_requests_total",
            "Requests assigned to each arm (in the shadow phase, the challenger's runs on copies).",
            Counter.REQUESTS,
        )
        yield self._per_arm(
            "rampart_predictions_total",
            "Predictions served by each arm's model.",
            Counter.CANDIDATES,
        )
        errors = CounterMetricFamily(
            "rampart_model_errors_total", "Model failures by kind.", labels=[*ARM_LABELS, "kind"]
        )
        for values, _, t in self.arms:
            for counter, kind in _ERRORS.items():
                errors.add_metric([*values, kind], t.counter(counter))
        yield errors
        yield self._per_arm(
            "rampart_fallbacks_total",
            "Challenger requests answered by the champion.",
            Counter.FALLBACKS,
        )
        events = CounterMetricFamily(
            "rampart_events_total", "Outcome events counted, by type.", labels=[*ARM_LABELS, "type"]
        )
        for values, _, t in self.arms:
            events.add_metric([*values, "impression"], t.impressions)
            events.add_metric([*values, "click"], t.clicks)
        yield events
        yield self._per_arm(
            "rampart_events_duplicates_total",
            "Events accepted but not counted again: their token, candidate and type were "
            "counted before.",
            Counter.EVENT_DUPLICATES,
        )
        yield self._per_arm(
            "rampart_events_orphan_clicks_total",
            "Clicks refused (click_without_impression): their impression was never counted "
            "on this host.",
            Counter.ORPHAN_CLICKS,
        )
        yield self._per_arm(
            "rampart_events_foreign_total",
            "Events counted here for a token another host issued (exactly once only per host).",
            Counter.FOREIGN_EVENTS,
        )
        yield self._per_arm(
            "rampart_shadow_dropped_total",
            "Shadow-phase copies of requests dropped unjudged: a worker's shadow queue was "
            "full, or a run was starved of CPU (the challenger arm's model).",
            Counter.SHADOW_DROPPED,
        )
        if self.dedupe_load is not None:
            fill, false_rate = self.dedupe_load
            yield _gauge(
                "rampart_events_dedupe_fill_ratio",
                "Share of set bits in the exactly-once filter's bucket for tokens issued now.",
                fill,
            )
            yield _gauge(
                "rampart_events_dedupe_false_duplicate_ratio",
                "Chance that a new event is now taken for a duplicate (from the fill); "
                "raise [serve] events_per_s when it climbs past 0.001.",
                false_rate,
            )

    def _latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "rampart_predict_latency_seconds",
            "Server-side /predict latency from the HDR counts (3 significant digits); "
            "_sum is estimated from the midpoints of the HDR buckets.",
            labels=list(ARM_LABELS),
        )
        for values, _, t in self.arms:
            cumulative = t.latency.cumsum()
            counts = cumulative[np.minimum(_EDGES, cumulative.size) - 1].tolist()
            counts.append(int(cumulative[-1]))
            family.add_metric(
                values,
                list(zip(_LE, counts, strict=True)),
                sum_value=float(t.latency @ _MIDPOINTS_US) / 1e6,
            )
        return family

    def _rollout(self) -> Iterator[Metric]:
        status, snapshot = self.status, self.snapshot
        rollout = status.get("rollout") if isinstance(status.get("rollout"), dict) else None
        split = snapshot.split_bp if snapshot.has_challenger else 0
        yield _gauge(
            "rampart_split_ratio",
            "Challenger share of traffic (the control word).",
            split / BASIS_POINTS,
        )
        yield _gauge(
            "rampart_effective_split_ratio",
            "Challenger share this worker routes (0 while the evaluator is stale).",
            self.effective_split_bp / BASIS_POINTS,
        )
        phase = _finite(status.get("phase"))
        if phase is None and rollout is not None:
            phase = _finite(rollout.get("phase"))
        yield _gauge(
            "rampart_rollout_phase", "Rollout phase: 0 = no rollout, 1-5.", int(phase or 0)
        )
        state = status.get("state") or ("running" if rollout else "idle")
        states = GaugeMetricFamily(
            "rampart_rollout_state", "1 for the rollout's current state.", labels=["state"]
        )
        for s in ROLLOUT_STATES:
            states.add_metric([s], int(s == state))
        yield states
        elapsed = _finite(rollout.get("time_in_phase_s")) if rollout is not None else None
        yield _gauge("rampart_rollout_phase_elapsed_seconds", "Time spent in the phase.", elapsed)
        info = GaugeMetricFamily(
            "rampart_rollout_info",
            "The rollout in progress (always 1).",
            labels=["rollout_id", "champion", "challenger"],
        )
        if rollout is not None:
            info.add_metric([str(rollout.get(k, "")) for k in ("id", "champion", "challenger")], 1)
        yield info
        comparison = _mapping(status.get("comparison"))
        for name, key, help_ in _COMPARISON:
            yield _gauge(name, help_, _finite(comparison.get(key)))
        counters = _mapping(status.get("counters"))
        for name, key, help_ in _COUNTERS:
            yield CounterMetricFamily(name, help_, value=int(_finite(counters.get(key)) or 0))

    def _guardrails(self) -> Iterator[Metric]:
        guardrails = self.status.get("guardrails")
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for g in guardrails if isinstance(guardrails, list) else []:
            if isinstance(g, dict) and g.get("name"):
                rows[(str(g["name"]), str(g.get("phase", "")))] = (
                    g  # a repeated name: the last wins
                )
        labels = ["guardrail", "phase"]
        states = GaugeMetricFamily(
            "rampart_guardrail_state",
            "Guardrail state: 1 pass, 0 waiting for data, -1 fail.",
            labels=labels,
        )
        values = GaugeMetricFamily(
            "rampart_guardrail_value", "A guardrail's current value (numeric ones).", labels=labels
        )
        for key, g in rows.items():
            states.add_metric(list(key), GUARDRAIL_STATE.get(str(g.get("state")), 0))
            if (number := _finite(g.get("value"))) is not None:
                values.add_metric(list(key), number)
        yield states
        yield values

    def _evaluator(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        yield _gauge(
            "rampart_evaluator_stale", "1 while the evaluator heartbeat is stale.", int(self.stale)
        )
        age = None
        if snapshot.heartbeat_ns > 0:
            age = max(snapshot.taken_ns - snapshot.heartbeat_ns, 0) / 1e9
        yield _gauge(
            "rampart_evaluator_heartbeat_age_seconds", "Time since the evaluator's heartbeat.", age
        )
        yield _gauge("rampart_workers", "Workers with a fresh heartbeat.", snapshot.live_workers)

    def _fleet(self) -> Iterator[Metric]:
        """Fleet mode only: the store's reachability, the hosts it has heard from, who leads."""
        fleet = _mapping(self.status.get("fleet"))
        if not fleet:
            return
        up = fleet.get("store") == "ok"
        yield _gauge("rampart_fleet_store_up", "1 while the fleet store answers.", int(up))
        since = _finite(fleet.get("unreachable_since"))
        yield _gauge(
            "rampart_fleet_store_unreachable_since_seconds",
            "Unix time the fleet store stopped answering (absent while it answers).",
            since,
        )
        hosts = fleet.get("hosts")
        hosts = hosts if isinstance(hosts, list) else []
        yield _gauge("rampart_fleet_hosts", "Hosts the fleet store has heard from.", len(hosts))
        host, leader = str(fleet.get("host", "")), fleet.get("leader")
        yield _gauge(
            "rampart_fleet_leader", "1 on the host that leads the fleet.", int(host == leader)
        )
        info = GaugeMetricFamily(
            "rampart_fleet_info",
            "This host in its fleet (always 1).",
            labels=["fleet", "host", "leader"],
        )
        info.add_metric([str(fleet.get("name", "")), host, str(leader or "")], 1)
        yield info
        yield _gauge(
            "rampart_fleet_local_breach",
            "1 while this host has pulled the challenger on its own evidence.",
            int(bool(fleet.get("local_breach"))),
        )


def render(
    snapshot: Snapshot,
    models: list[Model | None],
    *,
    stale: bool,
    effective_split_bp: int,
    status: Mapping[str, Any] | None = None,
    dedupe_load: tuple[float, float] | None = None,
) -> str:
    """The `/metrics` text. `status` is the evaluator's status file (None before it writes one);
    `dedupe_load` the exactly-once filter's (fill, false-duplicate rate) now."""
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(
            snapshot,
            models,
            stale=stale,
            effective_split_bp=effective_split_bp,
            status=status or {},
            dedupe_load=dedupe_load,
        )
    )
    return generate_latest(registry).decode()
