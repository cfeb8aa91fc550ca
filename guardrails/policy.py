"""The five-phase rollout policy: phases, their thresholds, and the decision each tick.

Defaults are the numbers of DESIGN.md's phase table. Every one is overridable in the
TOML config (`[rollout]`, `[phases.N]`, `[guardrails]`); a wrong key
or type fails at start with the exact key.

Durations are production durations; `time_scale` multiplies them (a demo at 1/7200
runs a 12-day rollout in two minutes) and `sample_scale` multiplies the phases'
minimum samples. Guardrail evidence minimums (clicks per calibration bucket, requests
before an error rate is judged) are about noise, not time, and are never scaled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from router.config import Config, ConfigError, typed_section
from router.shadow import ShadowConfig

HOUR = 3600.0
DAY = 24 * HOUR

EarlyRollback = Literal["sequential", "literal"]


class State(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAITING = "waiting"


class Action(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"  # a guardrail broke: the challenger is broken
    STOP = "stop"  # not good enough to go on (segment degradation, maximum duration)


@dataclass(frozen=True)
class Phase:
    number: int
    split_bp: int
    min_hours: float
    max_hours: float
    min_impressions: int  # challenger impressions since the rollout started
    p_better: float = 0.0  # advance needs P(challenger better) above this (0: not required)
    min_uplift: float = -1.0  # advance needs expected relative uplift above this
    inconclusive_ok: bool = False  # phase 3: advance unless the challenger is surely worse


DEFAULT_PHASES = (
    Phase(1, 300, 24.0, 48.0, 10_000),
    Phase(2, 1000, 48.0, 72.0, 50_000),
    Phase(3, 2000, 72.0, 120.0, 200_000, p_better=0.6, inconclusive_ok=True),
    Phase(4, 4000, 72.0, 120.0, 500_000, p_better=0.85, min_uplift=0.01),
    Phase(5, 5000, 48.0, 72.0, 1_000_000, p_better=0.90, min_uplift=0.01),
)


@dataclass(frozen=True)
class Guards:
    """Thresholds of the guardrails (guardrails/checks.py lists them; each is in safety.py,
    calibration.py or comparison.py)."""

    max_error_rate: float = 0.001
    max_p99_ms: float = 10.0
    min_clicks_per_10k: float = 1.0
    max_segment_error_rate: float = 0.5
    max_prediction_ks: float = 0.5
    min_prediction_spread: float = 0.25  # challenger sd / champion sd of predictions
    srm_p: float = 0.001  # on the always-valid p-value of the sequential SRM test
    srm_concentration: float = 100.0  # k of its Beta(k s, k (1 - s)) mixture around split s
    calibration_low: float = 0.85
    calibration_high: float = 1.15
    bucket_low: float = 0.7
    bucket_high: float = 1.4
    max_segment_degradation: float = 0.05
    segment_probability: float = 0.9
    literal_p_worse: float = 0.9
    # The paired checks (guardrails.paired), on rows both arms scored.
    min_paired_spread: float = 0.25  # challenger sd / champion sd on the same rows
    min_paired_correlation: float = 0.5
    paired_mean_low: float = 0.5  # mean challenger / mean champion prediction, same rows
    paired_mean_high: float = 2.0
    # Evidence minimums (never scaled: they are about noise).
    min_requests: int = 200
    min_latency_samples: int = 200
    min_ctr_impressions: int = 10_000
    min_segment_requests: int = 50
    min_predictions: int = 500
    min_srm_requests: int = 1000
    min_calibration_clicks: int = 200
    min_bucket_clicks: int = 50
    min_segment_clicks: int = 200
    min_paired_rows: int = 200
    # Two-sided confidence of the error-rate and calibration intervals (per look).
    confidence: float = 0.999


@dataclass(frozen=True)
class Policy:
    phases: tuple[Phase, ...] = DEFAULT_PHASES
    guards: Guards = field(default_factory=Guards)
    time_scale: float = 1.0
    sample_scale: float = 1.0
    early_rollback: EarlyRollback = "sequential"
    sequential_alpha: float = 0.05
    sequential_n_star: float = 4_000_000.0  # N* of the confidence sequence, total impressions
    promote_after_days: float = 12.0
    window_s: float = 60.0  # recent window for error rate and latency (wall seconds)
    load_timeout_s: float = 30.0  # workers must load the challenger within this
    journal_every_s: float = 60.0  # a metrics record in the event log this often (wall)
    paired: bool = True  # [paired] scoring is on: the paired checks apply
    shadow: ShadowConfig | None = None  # [phases.0]: rollouts start in the shadow phase

    @property
    def first_phase(self) -> int:
        """Where a rollout starts: 0 (shadow) when [phases.0] is configured, else 1."""
        return 0 if self.shadow is not None else 1

    def phase(self, number: int) -> Phase:
        if number == 0:
            # A rollout resumed in its shadow phase under a config that no longer has
            # [phases.0] keeps the defaults' duration.
            s = self.shadow or ShadowConfig()
            return Phase(0, 0, s.min_hours, s.max_hours, 0)
        return self.phases[number - 1]

    def shadow_min_requests(self) -> int:
        """Challenger runs on copies the shadow phase waits for (x sample_scale)."""
        return round((self.shadow or ShadowConfig()).min_requests * self.sample_scale)

    def min_s(self, number: int) -> float:
        return self.phase(number).min_hours * HOUR * self.time_scale

    def max_s(self, number: int) -> float:
        return self.phase(number).max_hours * HOUR * self.time_scale

    def min_impressions(self, number: int) -> int:
        return round(self.phase(number).min_impressions * self.sample_scale)

    @property
    def n_star(self) -> float:
        """N* scales with the samples: it should sit near the sample a phase expects."""
        return self.sequential_n_star * self.sample_scale

    @property
    def promote_after_s(self) -> float:
        return self.promote_after_days * DAY * self.time_scale

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        raw = config.raw
        rollout = raw.get("rollout", {})
        guards = typed_section(Guards, "guardrails", raw.get("guardrails", {}))
        phases_raw = raw.get("phases", {})
        if not isinstance(phases_raw, dict):
            raise ConfigError(f"[phases] must be a table, got {phases_raw!r}")
        unknown = set(phases_raw) - {str(p.number) for p in DEFAULT_PHASES} - {"0"}
        if unknown:
            raise ConfigError(
                f"[phases] has unknown phase(s) {sorted(unknown)}; phases are 0 (shadow) and 1-5"
            )
        phases = tuple(
            typed_section(
                Phase,
                f"phases.{p.number}",
                phases_raw.get(str(p.number), {}),
                base=p,
                fixed=("number",),
            )
            for p in DEFAULT_PHASES
        )
        shadow = ShadowConfig.from_raw(raw)
        extra = {"phases": phases, "guards": guards, "paired": config.paired.on, "shadow": shadow}
        policy = typed_section(cls, "rollout", rollout, extra=extra)
        policy.validate()
        return policy

    def validate(self) -> None:
        if self.early_rollback not in ("sequential", "literal"):
            raise ConfigError(
                f"[rollout] early_rollback must be 'sequential' or 'literal', "
                f"got {self.early_rollback!r}"
            )
        if not 0 < self.time_scale <= 1 or not 0 < self.sample_scale <= 1:
            raise ConfigError("[rollout] time_scale and sample_scale must be in (0, 1]")
        if not 0 < self.sequential_alpha < 0.5:
            raise ConfigError("[rollout] sequential_alpha must be in (0, 0.5)")
        previous = 0
        for p in self.phases:
            if not previous < p.split_bp <= 5000:
                raise ConfigError(
                    f"[phases.{p.number}] split_bp must grow phase by phase and stay "
                    f"<= 5000, got {p.split_bp}"
                )
            if not 0 <= p.min_hours <= p.max_hours:
                raise ConfigError(f"[phases.{p.number}] needs 0 <= min_hours <= max_hours")
            previous = p.split_bp
        for p in self.phases:
            if not 0 <= p.p_better < 1:
                raise ConfigError(f"[phases.{p.number}] p_better must be in [0, 1)")
        g = self.guards
        if not (0 < g.calibration_low < 1 < g.calibration_high):
            raise ConfigError("[guardrails] needs calibration_low < 1 < calibration_high")
        if not 0 < g.bucket_low < 1 < g.bucket_high:
            raise ConfigError("[guardrails] needs bucket_low < 1 < bucket_high")
        for name in (
            "max_error_rate",
            "max_segment_error_rate",
            "srm_p",
            "segment_probability",
            "literal_p_worse",
            "max_segment_degradation",
        ):
            if not 0 < getattr(g, name) < 1:
                raise ConfigError(f"[guardrails] {name} must be in (0, 1), got {getattr(g, name)}")
        for f in dataclasses.fields(g):
            if f.name.startswith("min_") and getattr(g, f.name) < 0:
                raise ConfigError(f"[guardrails] {f.name} must not be negative")
        if not 0 < g.paired_mean_low < 1 < g.paired_mean_high:
            raise ConfigError("[guardrails] needs paired_mean_low < 1 < paired_mean_high")
        if not -1 < g.min_paired_correlation < 1:
            raise ConfigError("[guardrails] min_paired_correlation must be in (-1, 1)")
        if not 0.5 < g.confidence < 1:
            raise ConfigError("[guardrails] confidence must be in (0.5, 1)")


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    guardrail: str | None = None


def decide(
    policy: Policy,
    phase: int,
    results: list[Any],
    time_in_phase_s: float,
    paused: bool,
) -> Decision:
    """One tick's decision from the guardrail results (`checks.evaluate`'s `Result`s).

    A failed guardrail acts at once, paused or not. Advancing needs every result of the
    phase to pass (duration and sample are results too). A phase past its maximum
    duration without passing stops the rollout; the champion keeps serving.
    """
    for r in results:
        if r.state == State.FAIL:
            action = Action.STOP if r.stops else Action.ROLLBACK
            return Decision(action, f"{r.name} {r.value_text} (threshold {r.threshold})", r.name)
    if paused:
        return Decision(Action.HOLD, "paused")
    if all(r.state == State.PASS for r in results):
        if phase == len(policy.phases):
            return Decision(Action.PROMOTE, "every guardrail of phase 5 passed")
        return Decision(Action.ADVANCE, f"every guardrail of phase {phase} passed")
    if time_in_phase_s >= policy.max_s(phase):
        waiting = [r.name for r in results if r.state != State.PASS]
        return Decision(
            Action.STOP,
            f"phase {phase} reached its maximum duration still waiting on {', '.join(waiting)}",
            "max_duration",
        )
    return Decision(Action.HOLD)
