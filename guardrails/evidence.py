"""What a guardrail reads and what it returns: the tick's `Evidence`, gathered from both
arms' metrics, and the `Result` of one check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from guardrails import stats
from guardrails.measures import ArmMetrics
from guardrails.policy import Policy, State


@dataclass(frozen=True)
class Result:
    name: str
    value: float | str | None
    threshold: str
    state: State
    phase: int  # the phase that introduced it
    detail: str = ""
    stops: bool = False  # a failure stops the rollout rather than marking a broken model

    @property
    def value_text(self) -> str:
        if isinstance(self.value, float):
            return f"{self.value:.4g}"
        return str(self.value)

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        return {
            "name": self.name,
            "value": value,
            "threshold": self.threshold,
            "state": self.state.value,
            "phase": self.phase,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SegmentRow:
    dimension: str
    value: str
    champion_ctr: float
    challenger_ctr: float
    change: float
    p_degraded: float
    enough: bool


@dataclass(frozen=True)
class Evidence:
    """What the evaluator knows this tick. The champion's counts are since the rollout
    started (a baseline is subtracted), the challenger's since its slot was loaded."""

    champion: ArmMetrics
    challenger: ArmMetrics
    recent: ArmMetrics | None  # the challenger over the last `window_s`
    phase_requests: tuple[int, int]  # champion, challenger since the phase started
    split_bp: int
    comparison: stats.Comparison
    sequential: stats.SequentialResult
    segments: list[SegmentRow]
    time_in_phase_s: float
    total_s: float
    phase: int = 0  # 0: judge every decision check now (unit tests of single checks)


def gather(
    policy: Policy,
    champion: ArmMetrics,
    challenger: ArmMetrics,
    recent: ArmMetrics | None,
    phase_requests: tuple[int, int],
    split_bp: int,
    time_in_phase_s: float,
    total_s: float,
    phase: int = 0,
) -> Evidence:
    b = stats.BetaArm(champion.impressions, champion.clicks)
    c = stats.BetaArm(challenger.impressions, challenger.clicks)
    comparison = stats.compare(b, c)
    sequential = stats.sequential_difference(
        b, c, alpha=policy.sequential_alpha, n_star=policy.n_star
    )
    g = policy.guards
    rows = champion.marginals.labels
    mb, mc = champion.marginals.table, challenger.marginals.table
    seg = stats.segment_degradation(
        mb[:, 2], mb[:, 3], mc[:, 2], mc[:, 3], g.max_segment_degradation, g.min_segment_clicks
    )
    segments = [
        SegmentRow(
            dim,
            value,
            float(mb[i, 3] / mb[i, 2]) if mb[i, 2] else 0.0,
            float(mc[i, 3] / mc[i, 2]) if mc[i, 2] else 0.0,
            float(seg.change[i]),
            float(seg.p_degraded[i]),
            bool(seg.enough[i]),
        )
        for i, (dim, value) in enumerate(rows)
    ]
    return Evidence(
        champion,
        challenger,
        recent,
        phase_requests,
        split_bp,
        comparison,
        sequential,
        segments,
        time_in_phase_s,
        total_s,
        phase,
    )
