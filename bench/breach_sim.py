"""Phase 1's breach checks at production traffic, by Monte Carlo, tick by tick.

`detection_times`: how long a broken challenger (NaN predictions, errors, slow, constant
output) goes unnoticed from the split flip to the evaluator tick that rolls it back.
`error_false_alarms`: how often a healthy challenger with an error rate below the limit is
rolled back by `error_rate`'s always-valid test, judged every tick through a whole rollout.
The thresholds come from a `Policy` (bench.policy_kernel's RULES record); `python -m
bench.policy_sim` prints both tables after the policy's operating characteristics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from bench import policy_kernel as kernel
from guardrails.measures import error_evalue_kernel
from guardrails.policy import DAY, HOUR, Policy


@dataclass(frozen=True)
class Broken:
    failure: str
    guardrail: str
    rule: str
    error_fraction: float = 0.0  # > 0: judged by the error-rate bound, else by a request count
    requests: int = 1  # challenger requests (= predictions, 1 candidate) the check needs


@dataclass(frozen=True)
class Detection:
    broken: Broken
    median_requests: float
    median_s: float
    p95_s: float
    max_s: float


def broken_challengers(policy: Policy) -> tuple[Broken, ...]:
    g = policy.guards
    bound = f"always-valid e-value >= {1 / (1 - g.confidence):.0f} against {g.max_error_rate:.1%}"
    return (
        Broken("NaN predictions", "predictions_in_range", "any prediction NaN or outside [0, 1]"),
        Broken("errors on 100% of requests", "error_rate", bound, error_fraction=1.0),
        Broken("errors on 5% of requests", "error_rate", bound, error_fraction=0.05),
        Broken(
            f"slow (+15 ms, p99 >= {g.max_p99_ms:g} ms)",
            "latency_p99",
            f"{g.min_latency_samples} latency samples",
            requests=g.min_latency_samples,
        ),
        Broken(
            "constant predictions",
            "prediction_spread",
            f"{g.min_predictions} predictions per arm",
            requests=g.min_predictions,
        ),
    )


@njit(cache=True)
def _detect(
    seed: int,
    runs: int,
    per_tick: float,
    error_fraction: float,
    requests: float,
    rules: np.record,
    max_ticks: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per run: the evaluator tick (1-based; the split flipped at tick 0) at which the check
    fails, and the challenger requests then; -1 if not within max_ticks."""
    np.random.seed(seed)
    ticks = np.full(runs, -1, dtype=np.int64)
    seen = np.zeros(runs, dtype=np.int64)
    for r in range(runs):
        n = 0
        errors = 0
        for k in range(1, max_ticks + 1):
            new = np.random.poisson(per_tick)
            n += new
            if error_fraction > 0.0:
                errors += np.random.binomial(new, error_fraction)
                log_e = error_evalue_kernel(float(errors), float(n), rules.max_error_rate)
                failed = log_e >= rules.error_evalue_line
            else:
                failed = n >= requests
            if failed:
                ticks[r] = k
                seen[r] = n
                break
    return ticks, seen


def detection_times(
    policy: Policy, rate: float, runs: int = 2000, seed: int = 1, tick_s: float = 1.0
) -> list[Detection]:
    """Phase 1 at `rate` requests/s in total: how long each broken challenger goes unnoticed.

    From the flip to the phase-1 split to the evaluator tick whose check fails (it then rolls
    back in that tick)."""
    first = kernel.phase_table(policy)[0]
    rules = kernel.rules(policy)
    out = []
    for i, broken in enumerate(broken_challengers(policy)):
        ticks, seen = _detect(
            seed * 100 + i,
            runs,
            rate * first["share"] * tick_s,
            broken.error_fraction,
            float(broken.requests),
            rules,
            round(first["max_s"] / tick_s),
        )
        found = ticks > 0
        seconds = ticks[found] * tick_s
        out.append(
            Detection(
                broken,
                float(np.median(seen[found])),
                float(np.median(seconds)),
                float(np.quantile(seconds, 0.95)),
                float(seconds.max()),
            )
        )
    return out


# --- healthy challengers with a small error rate: false rollbacks by error_rate -----------------


@dataclass(frozen=True)
class ErrorAlarm:
    error_rate: float  # the challenger's true error rate, below the guardrail's threshold
    rolled_back: float  # fraction of 12-day rollouts that error_rate rolled back
    in_phase: tuple[float, ...]  # of all runs, rolled back in phase 1..5
    median_hours: float | None  # to the rollback, over the runs rolled back


@njit(cache=True)
def _error_walk(
    seed: int,
    runs: int,
    per_tick: npt.NDArray[np.float64],
    ticks: npt.NDArray[np.int64],
    error_rate: float,
    rules: np.record,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Tick by tick through phases of the given lengths (in ticks): the tick (1-based) and phase
    at which error_rate fails on the cumulative counts (the evaluator's always-valid test), or
    -1."""
    np.random.seed(seed)
    at = np.full(runs, -1, dtype=np.int64)
    phase_at = np.full(runs, -1, dtype=np.int64)
    for r in range(runs):
        n = e = 0
        t = 0
        for p in range(per_tick.shape[0]):
            good_mean = per_tick[p] * (1.0 - error_rate)
            bad_mean = per_tick[p] * error_rate
            for _ in range(ticks[p]):
                bad = np.random.poisson(bad_mean)  # errors and successes: independent Poissons
                n += np.random.poisson(good_mean) + bad
                e += bad
                t += 1
                log_e = error_evalue_kernel(float(e), float(n), rules.max_error_rate)
                if log_e >= rules.error_evalue_line:
                    at[r] = t
                    phase_at[r] = p + 1
                    break
            if at[r] > 0:
                break
    return at, phase_at


def error_false_alarms(
    policy: Policy,
    rate: float,
    error_rates: tuple[float, ...] = (1e-4, 2e-4, 5e-4),
    runs: int = 200,
    seed: int = 1,
) -> list[ErrorAlarm]:
    """A challenger with errors below the threshold, through a 12-day rollout at the phases'
    minimum durations (phase 5 to its maximum), judged every 1 s tick as the evaluator does."""
    table = kernel.phase_table(policy)
    rules = kernel.rules(policy)
    seconds = np.append(table["min_s"][:-1], table["max_s"][-1])
    ticks = np.round(seconds).astype(np.int64)  # a tick a second
    out = []
    for i, q in enumerate(error_rates):
        at, phase_at = _error_walk(seed * 100 + i, runs, rate * table["share"], ticks, q, rules)
        fired = at > 0
        out.append(
            ErrorAlarm(
                q,
                float(fired.mean()),
                tuple(float(np.mean(phase_at == k)) for k in range(1, len(table) + 1)),
                float(np.median(at[fired])) / HOUR if fired.any() else None,
            )
        )
    return out


# --- report ---------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.1%}"


def markdown(
    detections: list[Detection], alarms: list[ErrorAlarm], policy: Policy, rate: float
) -> list[str]:
    """The two tables, as markdown lines (each table after a blank line)."""
    table = kernel.phase_table(policy)
    lines: list[str] = []
    if detections:
        share = table[0]["share"]
        lines += [
            "",
            f"Broken challengers in phase 1 ({share:.0%} of {rate:g} requests/s = "
            f"{rate * share:g}/s to the challenger, 1 candidate per request; seconds "
            "from the split flip to the evaluator tick that rolls back; ticks every 1 s):",
            "",
            "| broken challenger | guardrail | evidence | median requests seen | median s | "
            "95th pct s | max s |",
            "|:---|:---|:---|---:|---:|---:|---:|",
        ]
        for d in detections:
            b = d.broken
            lines.append(
                f"| {b.failure} | `{b.guardrail}` | {b.rule} | {d.median_requests:g} | "
                f"{d.median_s:g} | {d.p95_s:g} | {d.max_s:g} |"
            )
    if alarms:
        days = (table["min_s"][:-1].sum() + table["max_s"][-1]) / DAY
        lines += [
            "",
            f"Healthy challengers with errors below the {policy.guards.max_error_rate:.1%} "
            f"threshold, through a {days:g}-day rollout at the minimum durations, `error_rate` "
            "judged every 1 s tick (cumulative, the evaluator's always-valid test):",
            "",
            "| true error rate | rolled back by error_rate | in phase | median hours to rollback |",
            "|---:|---:|:---|---:|",
        ]
        for a in alarms:
            hours = "—" if a.median_hours is None else f"{a.median_hours:.1f}"
            phases = ", ".join(f"{k}: {_pct(f)}" for k, f in enumerate(a.in_phase, 1) if f > 0)
            lines.append(
                f"| {a.error_rate:.2%} | {_pct(a.rolled_back)} | {phases or '—'} | {hours} |"
            )
    return lines


__all__ = [
    "Broken",
    "Detection",
    "ErrorAlarm",
    "broken_challengers",
    "detection_times",
    "error_false_alarms",
    "markdown",
]
