"""The production policy as one numba kernel, for the Monte-Carlo simulations.

`decide_kernel` answers what `checks.evaluate` + `policy.decide` answer each tick, on the
evidence of the simulated world below; `decide_reference` is that production code itself,
run on the same evidence (`World.evidence`, through `checks.gather`). The tests hold the
kernel to the reference decision for decision on random looks
(tests/bench/test_policy_kernel.py): the simulations' numbers are the production policy's.
The production code takes 0.2-0.8 ms a tick (gather, evaluate, decide), the kernel 0.5 us: a
12-day rollout looked at every minute is 17,000 ticks, and a table is 36,000 rollouts.

The simulated world, which the kernel takes as given:
- one request is one candidate and one impression; all traffic of both arms is in one
  segment cell (so every dimension's value there sees all of it);
- the challenger never errs or times out, answers in WORLD_LATENCY_US, its predictions have
  the champion's distribution, and it is calibrated (predicted clicks = its clicks).
So predictions_in_range, error_rate, segment_error_rate, latency_p99, prediction_spread,
prediction_shift, calibration and calibration_buckets only wait for their samples (and the
paired checks pass with the challenger's first 200 requests, all paired, before the 500
predictions the spread waits for); the
simulation varies what the other checks judge (`LOOK`): impressions and clicks per arm,
requests per arm since the phase started (sample_ratio), time in the phase and in all.

The policy enters as two typed records built from a `Policy`: `phase_table` (PHASE, a row a
phase) and `rules` (RULES: thresholds and evidence minimums, named as in `Policy`/`Guards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from guardrails import checks
from guardrails.comparison import segment_probability_needed
from guardrails.evidence import Evidence
from guardrails.measures import (
    FAIL,
    PASS,
    WAITING,
    ArmMetrics,
    Marginals,
    SegmentCodes,
    srm_sequential_kernel,
)
from guardrails.policy import Action, Policy, decide
from guardrails.safety import error_evalue_line
from guardrails.stats import (
    EXACT_CUTOFF,
    beta_compare_kernel,
    log_ratio_cdf,  # the normal approximation segment_degradation uses, as a scalar kernel
    sequential_bound_kernel,
    sequential_rho,
)
from router import layout
from router.config import Config
from router.segments import DIMENSIONS

PHASE = np.dtype(
    [
        ("split_bp", np.float64),
        ("share", np.float64),  # split_bp as a fraction of traffic
        ("min_s", np.float64),  # Policy.min_s: time-scaled
        ("max_s", np.float64),
        ("min_impressions", np.float64),  # Policy.min_impressions: sample-scaled
        ("p_better", np.float64),
        ("min_uplift", np.float64),
        ("inconclusive_ok", np.bool_),
    ]
)
RULES = np.dtype(
    [
        ("sequential", np.bool_),  # early_rollback == "sequential"
        ("alpha", np.float64),  # sequential_alpha
        ("rho", np.float64),  # stats.sequential_rho(alpha, n_star)
        ("literal_p_worse", np.float64),
        ("exact_cutoff", np.float64),  # stats.EXACT_CUTOFF
        ("promote_after_s", np.float64),
        ("srm_p", np.float64),
        ("srm_concentration", np.float64),
        ("min_srm_requests", np.float64),
        ("min_clicks_per_10k", np.float64),
        ("min_ctr_impressions", np.float64),
        ("min_requests", np.float64),
        ("min_segment_requests", np.float64),
        ("min_latency_samples", np.float64),
        ("min_predictions", np.float64),
        ("min_calibration_clicks", np.float64),
        ("min_bucket_clicks", np.float64),
        ("min_segment_clicks", np.float64),
        ("segment_log_floor", np.float64),  # log(1 - max_segment_degradation)
        ("segment_needed", np.float64),  # P(degraded) to fail, over the world's segment rows
        ("max_error_rate", np.float64),
        ("error_evalue_line", np.float64),  # log e-value at which error_rate fails
    ]
)
LOOK = np.dtype(
    [
        ("phase", np.int64),  # 1-based, as in the evaluator
        ("paused", np.bool_),
        ("champion_impressions", np.float64),  # since the rollout started
        ("champion_clicks", np.float64),
        ("challenger_impressions", np.float64),  # since the challenger loaded
        ("challenger_clicks", np.float64),
        ("champion_phase_requests", np.float64),  # since the phase started
        ("challenger_phase_requests", np.float64),
        ("time_in_phase_s", np.float64),
        ("total_s", np.float64),
    ]
)

# Decisions: an action code (index into ACTIONS) and a guardrail code (index into GUARDRAILS,
# the ones that can end a rollout in the simulated world; 0: none).
HOLD, ADVANCE, PROMOTE, ROLLBACK, STOP = range(5)
ACTIONS = (Action.HOLD, Action.ADVANCE, Action.PROMOTE, Action.ROLLBACK, Action.STOP)
NO_GUARDRAIL, SAMPLE_RATIO, CLICKS_PER_10K, AB_WORSE, SEGMENT_DEGRADATION, MAX_DURATION = range(6)
GUARDRAILS = (
    "",
    "sample_ratio",
    "clicks_per_10k",
    "ab_worse",
    "segment_degradation",
    "max_duration",
)

WORLD_LATENCY_US = 800
WORLD_BINS = (15, 25)  # prediction-histogram bins of the predictions, half each: 1.5%, 2.5%


# --- the records -------------------------------------------------------------------------------


def phase_table(policy: Policy) -> npt.NDArray[np.void]:
    """The policy's phases as PHASE rows, phase n in row n - 1."""
    table = np.zeros(len(policy.phases), dtype=PHASE)
    for row, p in zip(table, policy.phases, strict=True):
        row["split_bp"] = p.split_bp
        row["share"] = p.split_bp / layout.BASIS_POINTS
        row["min_s"] = policy.min_s(p.number)
        row["max_s"] = policy.max_s(p.number)
        row["min_impressions"] = policy.min_impressions(p.number)
        row["p_better"] = p.p_better
        row["min_uplift"] = p.min_uplift
        row["inconclusive_ok"] = p.inconclusive_ok
    return table


def rules(policy: Policy) -> np.record:
    """The policy's thresholds as one RULES record. Raises ValueError for a policy under which
    the simulated world's healthy challenger would fail a check the kernel takes as passing."""
    g = policy.guards
    if g.max_p99_ms <= WORLD_LATENCY_US / 1000:
        raise ValueError(f"max_p99_ms must be above the world's {WORLD_LATENCY_US} us")
    if g.min_prediction_spread > 1 or g.max_prediction_ks < 0:
        raise ValueError("the world's challenger has the champion's predictions: it must pass")
    fields = {
        "sequential": policy.early_rollback == "sequential",
        "alpha": policy.sequential_alpha,
        "rho": sequential_rho(policy.sequential_alpha, policy.n_star),
        "exact_cutoff": float(EXACT_CUTOFF),
        "promote_after_s": policy.promote_after_s,
        "segment_log_floor": math.log1p(-g.max_segment_degradation),
        "segment_needed": segment_probability_needed(policy, len(DIMENSIONS)),
        "error_evalue_line": error_evalue_line(g),
    }
    names = RULES.names or ()
    values = tuple(fields[name] if name in fields else getattr(g, name) for name in names)
    record: np.record = np.rec.array([values], dtype=RULES)[0]
    return record


# --- the kernel --------------------------------------------------------------------------------


@njit(cache=True)
def comparison_kernel(
    rules: np.record, n_b: float, c_b: float, n_c: float, c_c: float
) -> tuple[float, float, bool]:
    """(P(better), P(worse), compared) as `stats.compare` (Beta(1, 1) priors); not compared
    without impressions in an arm (P = 0.5, method "none")."""
    if n_b <= 0.0 or n_c <= 0.0:
        return 0.5, 0.5, False
    p_better, p_worse, _ = beta_compare_kernel(
        1.0 + c_b, 1.0 + n_b - c_b, 1.0 + c_c, 1.0 + n_c - c_c, rules.exact_cutoff
    )
    return p_better, p_worse, True


@njit(cache=True)
def ab_worse_kernel(rules: np.record, n_b: float, c_b: float, n_c: float, c_c: float) -> int:
    """The state of `comparison.ab_worse` (WAITING, PASS or FAIL, as in guardrails.measures)."""
    if c_b <= 0.0 or c_c <= 0.0:
        return WAITING
    if rules.sequential:
        d, half_width = sequential_bound_kernel(n_b, c_b, n_c, c_c, rules.alpha, rules.rho)
        return FAIL if min(d + half_width, 1.0) < 0.0 else PASS
    _, p_worse, _ = comparison_kernel(rules, n_b, c_b, n_c, c_c)
    return FAIL if p_worse > rules.literal_p_worse else PASS


@njit(cache=True)
def decide_kernel(
    phases: npt.NDArray[np.void],
    rules: np.record,
    phase: int,
    paused: bool,
    n_b: float,
    c_b: float,
    n_c: float,
    c_c: float,
    req_b: float,
    req_c: float,
    t_phase: float,
    t_total: float,
) -> tuple[int, int]:
    """(action, guardrail) of one tick: impressions and clicks of the champion (n_b, c_b) and
    challenger (n_c, c_c), requests since the phase started (req_b, req_c), seconds in the phase
    and in the rollout. The checks in `checks.BREACH_CHECKS` order, then the advance criteria,
    then `policy.decide`. A decision depends on the first failure and on whether every check
    passes, so once one waits, checks that cannot fail are not computed."""
    spec = phases[phase - 1]
    # phase 1: predictions_in_range, error_rate, segment_error_rate and latency_p99 wait for
    # their samples (challenger requests = impressions), prediction_spread and _shift for
    # both arms' predictions
    waiting = (
        n_c < 1.0
        or n_c < rules.min_requests
        or n_c < rules.min_segment_requests
        or n_c < rules.min_latency_samples
        or min(n_b, n_c) < rules.min_predictions
    )
    if req_b + req_c >= rules.min_srm_requests:
        log_bf = srm_sequential_kernel(req_b, req_c, spec.split_bp, rules.srm_concentration)
        if min(1.0, math.exp(-log_bf)) < rules.srm_p:
            return ROLLBACK, SAMPLE_RATIO
    else:
        waiting = True
    if n_c >= rules.min_ctr_impressions:
        if c_c / n_c * 10_000 < rules.min_clicks_per_10k:
            return ROLLBACK, CLICKS_PER_10K
    else:
        waiting = True
    if phase >= 2:  # calibration and calibration_buckets: the world's ratio is 1
        waiting = (
            waiting
            or c_c <= 0.0
            or c_c < rules.min_calibration_clicks
            or c_c < rules.min_bucket_clicks
        )
    if phase >= 3:
        worse = ab_worse_kernel(rules, n_b, c_b, n_c, c_c)
        if worse == FAIL:
            return ROLLBACK, AB_WORSE
        waiting = waiting or worse == WAITING
    # comparison.at_judgement, which is also min_duration and min_impressions passing: before
    # it segment_degradation cannot fail, and advancing waits anyway
    judged = t_phase >= spec.min_s and n_c >= spec.min_impressions
    waiting = waiting or not judged
    if phase >= 4:
        m = rules.min_segment_clicks
        if n_b > 0.0 and n_c > 0.0 and c_b >= m and c_c >= m:  # the world's rows, enough data
            if judged:
                below, _ = log_ratio_cdf(
                    1.0 + c_b, 1.0 + n_b - c_b, 1.0 + c_c, 1.0 + n_c - c_c, rules.segment_log_floor
                )
                if below > rules.segment_needed:
                    return STOP, SEGMENT_DEGRADATION
        else:
            waiting = True
    if paused:
        return HOLD, NO_GUARDRAIL
    # the rest of advance.advance_checks
    if phase == phases.shape[0]:
        waiting = waiting or t_total < rules.promote_after_s
    if not waiting and (spec.p_better > 0.0 or spec.min_uplift > -1.0):
        p_better, p_worse, compared = comparison_kernel(rules, n_b, c_b, n_c, c_c)
        if spec.p_better > 0.0:
            inconclusive = compared and p_worse <= rules.literal_p_worse
            waiting = not (p_better > spec.p_better or (spec.inconclusive_ok and inconclusive))
        if spec.min_uplift > -1.0:
            uplift = 0.0
            if compared and c_b > 0.0:  # stats.compare: E[p_c] E[1/p_b] - 1
                a1, b1, a2, b2 = 1.0 + c_b, 1.0 + n_b - c_b, 1.0 + c_c, 1.0 + n_c - c_c
                uplift = a2 / (a2 + b2) * (a1 + b1 - 1.0) / (a1 - 1.0) - 1.0
            waiting = waiting or not uplift > spec.min_uplift
    if not waiting:
        return (PROMOTE if phase == phases.shape[0] else ADVANCE), NO_GUARDRAIL
    if t_phase >= spec.max_s:
        return STOP, MAX_DURATION
    return HOLD, NO_GUARDRAIL


@njit(cache=True)
def decide_looks(
    phases: npt.NDArray[np.void], rules: np.record, looks: npt.NDArray[np.void]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """decide_kernel over an array of LOOK records: (actions, guardrails)."""
    actions = np.empty(looks.shape[0], dtype=np.int64)
    guardrails = np.empty(looks.shape[0], dtype=np.int64)
    for i in range(looks.shape[0]):
        k = looks[i]
        actions[i], guardrails[i] = decide_kernel(
            phases, rules, k.phase, k.paused, k.champion_impressions, k.champion_clicks,
            k.challenger_impressions, k.challenger_clicks, k.champion_phase_requests,
            k.challenger_phase_requests, k.time_in_phase_s, k.total_s,
        )  # fmt: skip
    return actions, guardrails


# --- the reference: the production checks on the world's evidence -----------------------------


@dataclass(frozen=True)
class World:
    """The simulated world's shape in a config's segment space and calibration buckets."""

    labels: tuple[tuple[str, str], ...]  # segment rows, as `measures.SegmentCodes`
    cell: frozenset[tuple[str, str]]  # the one cell all traffic is in: each dimension's first
    n_buckets: int

    @classmethod
    def of(cls, config: Config) -> World:
        space = config.segments
        cell = frozenset((d, values[0]) for d, values in zip(DIMENSIONS, space.values, strict=True))
        return cls(SegmentCodes(space).labels, cell, config.n_buckets)

    def arm(self, impressions: int, clicks: int) -> ArmMetrics:
        """One arm's metrics (what `measures.measure` gives for its counters)."""
        table = np.zeros((len(self.labels), 5))
        for i, label in enumerate(self.labels):
            if label in self.cell:  # requests, errors, impressions, clicks, predicted-CTR sum
                table[i] = (impressions, 0, impressions, clicks, clicks)
        hist = np.zeros(layout.N_PRED_BINS, dtype=np.int64)
        hist[list(WORLD_BINS)] = impressions // 2, impressions - impressions // 2
        bucket = WORLD_BINS[0] * self.n_buckets // layout.N_PRED_BINS
        bucket_clicks, bucket_impressions = np.zeros(self.n_buckets), np.zeros(self.n_buckets)
        bucket_clicks[bucket], bucket_impressions[bucket] = clicks, impressions
        latency = WORLD_LATENCY_US if impressions else 0
        # Every request paired, on the same rows as the champion, with the same prediction.
        values = (np.array(WORLD_BINS) + 0.5) / layout.N_PRED_BINS
        counts = hist[list(WORLD_BINS)].astype(np.float64)
        s, q = float(counts @ values), float(counts @ values**2)
        paired = np.array([counts.sum(), s, s, q, q, q])
        return ArmMetrics(
            requests=impressions,
            errors=0,
            timeouts=0,
            fallbacks=0,
            stale_routed=0,
            predictions=impressions,
            out_of_range=0,
            latency_us=(latency, latency, latency, latency),
            latency_count=impressions,
            impressions=impressions,
            clicks=clicks,
            predicted=float(clicks),
            pred_hist=hist,
            paired=paired,
            paired_requests=impressions,
            pairs_dropped=0,
            bucket_clicks=bucket_clicks,
            bucket_impressions=bucket_impressions,
            bucket_predicted=bucket_clicks.copy(),
            marginals=Marginals(self.labels, table),
        )

    def evidence(self, policy: Policy, look: np.void) -> Evidence:
        """The production `Evidence` of a LOOK record."""
        phase = int(look["phase"])
        return checks.gather(
            policy,
            self.arm(int(look["champion_impressions"]), int(look["champion_clicks"])),
            self.arm(int(look["challenger_impressions"]), int(look["challenger_clicks"])),
            None,
            (int(look["champion_phase_requests"]), int(look["challenger_phase_requests"])),
            policy.phase(phase).split_bp,
            float(look["time_in_phase_s"]),
            float(look["total_s"]),
            phase,
        )


def decide_reference(policy: Policy, look: np.void, world: World) -> tuple[Action, str | None]:
    """What the evaluator decides on a LOOK: `checks.evaluate` + `policy.decide`."""
    e = world.evidence(policy, look)
    results = checks.evaluate(policy, e, e.phase)
    d = decide(policy, e.phase, results, e.time_in_phase_s, bool(look["paused"]))
    return d.action, d.guardrail


__all__ = [
    "ACTIONS",
    "GUARDRAILS",
    "LOOK",
    "PHASE",
    "RULES",
    "World",
    "ab_worse_kernel",
    "comparison_kernel",
    "decide_kernel",
    "decide_looks",
    "decide_reference",
    "phase_table",
    "rules",
]
