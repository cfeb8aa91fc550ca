"""Operating characteristics of the whole five-phase policy, by Monte Carlo.

Each replication walks a challenger from phase 1 to its end on synthetic traffic (no HTTP):
per look, Poisson(rate x look_s) impressions, Binomial(n, split) of them to the challenger,
Binomial clicks per arm at the champion's CTR and at the challenger's (champion x (1 + effect)).
On the cumulative counts, with the evaluator's own kernels and `guardrails.policy.Policy()`'s
numbers, it applies what the evaluator applies every tick:

- sample_ratio (phase 1 on): the always-valid SRM test on the phase's counts (1 request taken
  as 1 impression); with an honest hash split it fires only on noise (<= 0.1% per phase);
- ab_worse (phase 3 on), two variants in the same walk (they share the traffic until one
  fires): `sequential`, the default always-valid bound (`sequential_bound_kernel`), and
  `literal`, P(worse) > 0.9 (`beta_compare_kernel`, exact/normal switch as in `compare`);
- advancing at the first look where the phase's minimum duration and sample are reached and its
  P(better) / uplift (E[p_c] E[1/p_b] - 1, as in `compare`) / total-duration checks pass;
  promotion after phase 5; a stop at a phase's maximum duration.

Not simulated: the other guardrails are taken as passing (a healthy challenger: no errors,
fast, calibrated, no segment degraded; the scenarios in bench/scenarios.py cover those).
Broken challengers are `detection_times`: how long the phase-1 breach checks need at
production traffic, simulated tick by tick.

    python -m bench.policy_sim --runs 2000 --seed 1 [--rate 250] [--look-s 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from guardrails import stats
from guardrails.measures import error_evalue_kernel, srm_sequential_kernel
from guardrails.policy import Policy
from guardrails.stats import EXACT_CUTOFF, beta_compare_kernel, sequential_bound_kernel

RELATIVE_EFFECTS = (-0.10, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.10)
VARIANTS = ("sequential", "literal")
OUTCOMES = ("promoted", "rolled_back", "stopped")
REASONS = ("", "ab_worse", "sample_ratio", "max_duration")
PROMOTED, ROLLED_BACK, STOPPED = 0, 1, 2
NO_REASON, AB_WORSE, SAMPLE_RATIO, MAX_DURATION = 0, 1, 2, 3
DAY = 86400.0


@dataclass(frozen=True)
class Setting:
    rate: float = 250.0  # impressions per second, both arms (1 request = 1 impression)
    ctr: float = 0.02  # champion CTR
    look_s: float = 60.0
    effects: tuple[float, ...] = RELATIVE_EFFECTS
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True)
class VariantOutcome:
    promoted: float
    rolled_back: float
    stopped: float
    end_phase: tuple[float, ...]  # fraction of runs that ended in phase 1..5
    rolled_back_by: dict[str, float]  # reason -> fraction of runs
    median_days: float  # time to the end, all runs
    median_days_rolled_back: float | None


@dataclass(frozen=True)
class Row:
    relative_effect: float
    sequential: VariantOutcome
    literal: VariantOutcome


# --- the walk -----------------------------------------------------------------------------------


@njit(cache=True)
def _end(
    out: npt.NDArray[np.float64], r: int, v: int, outcome: int, phase: int, reason: int, t: float
) -> None:
    out[r, v, 0] = outcome
    out[r, v, 1] = phase + 1
    out[r, v, 2] = reason
    out[r, v, 3] = t


@njit(cache=True)
def _walk(
    out: npt.NDArray[np.float64],
    r: int,
    seed: int,
    per_look: float,
    look_s: float,
    ctr_b: float,
    ctr_c: float,
    phases: npt.NDArray[np.float64],
    promote_after_s: float,
    literal_threshold: float,
    alpha: float,
    rho: float,
    cutoff: float,
    srm_log_bf: float,
    srm_concentration: float,
    min_srm: float,
) -> float:
    """One rollout; writes (outcome, phase, reason, seconds) per variant into out[r] and returns
    the impressions simulated. phases rows: split_bp, min_s, max_s, min_impressions, p_better,
    min_uplift, inconclusive_ok."""
    np.random.seed(seed)
    last = phases.shape[0] - 1
    n1 = c1 = n2 = c2 = 0.0  # since the rollout started (champion) / the challenger loaded
    ph1 = ph2 = 0.0  # this phase's, for the sample-ratio test
    phase = 0
    looks = phase_looks = 0  # counted, not summed in floats: minimums are compared exactly
    seq_open = lit_open = True
    while True:
        share = phases[phase, 0] / 10_000.0
        new = np.random.poisson(per_look)
        new2 = np.random.binomial(new, share)
        new1 = new - new2
        n1 += new1
        n2 += new2
        ph1 += new1
        ph2 += new2
        c1 += np.random.binomial(new1, ctr_b)
        c2 += np.random.binomial(new2, ctr_c)
        looks += 1
        phase_looks += 1
        t = looks * look_s
        t_phase = phase_looks * look_s
        # Breach checks, in the evaluator's order: the first failure names the rollback.
        if (
            ph1 + ph2 >= min_srm
            and srm_sequential_kernel(ph1, ph2, phases[phase, 0], srm_concentration) > srm_log_bf
        ):
            for v in range(2):
                if (seq_open, lit_open)[v]:
                    _end(out, r, v, ROLLED_BACK, phase, SAMPLE_RATIO, t)
            break
        clicked = c1 > 0 and c2 > 0  # ab_worse waits (and holds advancing) until both have one
        p_better = -1.0
        if phase >= 2 and clicked:
            if seq_open:
                d, half_width = sequential_bound_kernel(n1, c1, n2, c2, alpha, rho)
                if min(d + half_width, 1.0) < 0.0:
                    _end(out, r, 0, ROLLED_BACK, phase, AB_WORSE, t)
                    seq_open = False
            if lit_open:
                p_better, p_worse, _ = beta_compare_kernel(
                    1.0 + c1, 1.0 + n1 - c1, 1.0 + c2, 1.0 + n2 - c2, cutoff
                )
                if p_worse > literal_threshold:
                    _end(out, r, 1, ROLLED_BACK, phase, AB_WORSE, t)
                    lit_open = False
            if not (seq_open or lit_open):
                break
        # Advance criteria of the current phase (checks.advance_checks).
        ready = t_phase >= phases[phase, 1] and n2 >= phases[phase, 3]
        if ready and phase >= 2 and not clicked:
            ready = False
        if ready and phases[phase, 4] > 0.0 and phases[phase, 6] == 0.0:
            if p_better < 0.0:
                p_better, _, _ = beta_compare_kernel(
                    1.0 + c1, 1.0 + n1 - c1, 1.0 + c2, 1.0 + n2 - c2, cutoff
                )
            ready = p_better > phases[phase, 4]
        if ready and phases[phase, 5] > -1.0:
            a1, b1, a2, b2 = 1.0 + c1, 1.0 + n1 - c1, 1.0 + c2, 1.0 + n2 - c2
            uplift = a2 / (a2 + b2) * (a1 + b1 - 1.0) / (a1 - 1.0) - 1.0 if c1 > 0 else 0.0
            ready = uplift > phases[phase, 5]
        # The evaluator needs total > 12 days. Its ticks land a fraction of a second after each
        # minimum, so a rollout whose phases all advanced at their minimums is just past 12 days
        # at phase 5's maximum tick (and decide() promotes before it stops). Looks here land on
        # the minimums exactly, so the same tick is reached with >=.
        if ready and phase == last:
            ready = t >= promote_after_s
        if ready:
            if phase == last:
                for v in range(2):
                    if (seq_open, lit_open)[v]:
                        _end(out, r, v, PROMOTED, phase, NO_REASON, t)
                break
            phase += 1
            phase_looks = 0
            ph1 = ph2 = 0.0
        elif t_phase >= phases[phase, 2]:
            for v in range(2):
                if (seq_open, lit_open)[v]:
                    _end(out, r, v, STOPPED, phase, MAX_DURATION, t)
            break
    return n1 + n2


@njit(cache=True, parallel=True)
def simulate(
    seeds: npt.NDArray[np.int64],
    per_look: float,
    look_s: float,
    ctr_b: float,
    ctr_c: float,
    phases: npt.NDArray[np.float64],
    promote_after_s: float,
    literal_threshold: float,
    alpha: float,
    rho: float,
    cutoff: float,
    srm_log_bf: float,
    srm_concentration: float,
    min_srm: float,
) -> tuple[npt.NDArray[np.float64], float]:
    """out[run, variant] = (outcome, phase 1-5, reason, seconds), and the impressions simulated.

    Each run seeds its thread's generator from its own seed, so results do not depend on how
    runs are spread over threads."""
    runs = seeds.shape[0]
    out = np.zeros((runs, 2, 4))
    impressions = np.zeros(runs)
    for r in prange(runs):
        impressions[r] = _walk(
            out, r, seeds[r], per_look, look_s, ctr_b, ctr_c, phases, promote_after_s,
            literal_threshold, alpha, rho, cutoff, srm_log_bf, srm_concentration, min_srm,
        )  # fmt: skip
    return out, impressions.sum()


def phase_table(policy: Policy) -> npt.NDArray[np.float64]:
    """The policy's phases as the rows `_walk` reads."""
    return np.array(
        [
            [
                p.split_bp,
                policy.min_s(p.number),
                policy.max_s(p.number),
                policy.min_impressions(p.number),
                p.p_better,
                p.min_uplift,
                float(p.inconclusive_ok),
            ]
            for p in policy.phases
        ],
        dtype=np.float64,
    )


def _summary(ends: npt.NDArray[np.float64], phases: int) -> VariantOutcome:
    outcome, phase, reason, seconds = ends[:, 0], ends[:, 1], ends[:, 2], ends[:, 3]
    rolled = outcome == ROLLED_BACK
    return VariantOutcome(
        promoted=float(np.mean(outcome == PROMOTED)),
        rolled_back=float(np.mean(rolled)),
        stopped=float(np.mean(outcome == STOPPED)),
        end_phase=tuple(float(np.mean(phase == k)) for k in range(1, phases + 1)),
        rolled_back_by={
            name: float(np.mean(rolled & (reason == code)))
            for code, name in enumerate(REASONS)
            if name and name != "max_duration"
        },
        median_days=float(np.median(seconds)) / DAY,
        median_days_rolled_back=float(np.median(seconds[rolled])) / DAY if rolled.any() else None,
    )


def run(setting: Setting, runs: int, seed: int) -> tuple[list[Row], float]:
    """One row per effect, and the impressions simulated in all."""
    p = setting.policy
    g = p.guards
    phases = phase_table(p)
    rows, impressions = [], 0.0
    for i, effect in enumerate(setting.effects):
        seeds = np.random.SeedSequence([seed, i]).generate_state(runs).astype(np.int64)
        out, simulated = simulate(
            seeds,
            setting.rate * setting.look_s,
            setting.look_s,
            setting.ctr,
            setting.ctr * (1.0 + effect),
            phases,
            p.promote_after_s,
            g.literal_p_worse,
            p.sequential_alpha,
            stats.sequential_rho(p.sequential_alpha, p.n_star),
            float(EXACT_CUTOFF),
            -math.log(g.srm_p),
            g.srm_concentration,
            float(g.min_srm_requests),
        )
        impressions += simulated
        rows.append(
            Row(effect, _summary(out[:, 0], len(p.phases)), _summary(out[:, 1], len(p.phases)))
        )
    return rows, impressions


# --- broken challengers: time to detection in phase 1 -------------------------------------------


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
            "slow (+15 ms, p99 >= 10 ms)",
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
    max_error_rate: float,
    z: float,
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
                failed = error_evalue_kernel(float(errors), float(n), max_error_rate) >= z
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
    g = policy.guards
    per_tick = rate * policy.phase(1).split_bp / 10_000.0 * tick_s
    z = math.log(1.0 / (1.0 - g.confidence))  # the e-value line of checks.error_rate
    out = []
    for i, broken in enumerate(broken_challengers(policy)):
        ticks, seen = _detect(
            seed * 100 + i,
            runs,
            per_tick,
            broken.error_fraction,
            float(broken.requests),
            g.max_error_rate,
            z,
            round(policy.max_s(1) / tick_s),
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
    max_error_rate: float,
    z: float,
    window: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Tick by tick through phases of the given lengths: the tick (1-based) and phase at which
    error_rate fails on the cumulative counts (the evaluator's always-valid test), or -1."""
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
                failed = error_evalue_kernel(float(e), float(n), max_error_rate) >= z
                if failed:
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
    g = policy.guards
    z = math.log(1.0 / (1.0 - g.confidence))  # the e-value line of checks.error_rate
    per_tick = np.array([rate * p.split_bp / 10_000.0 for p in policy.phases])
    hours = [p.min_hours for p in policy.phases[:-1]] + [policy.phases[-1].max_hours]
    ticks = np.array([round(h * 3600 * policy.time_scale) for h in hours], dtype=np.int64)
    out = []
    for i, q in enumerate(error_rates):
        at, phase_at = _error_walk(
            seed * 100 + i, runs, per_tick, ticks, q, g.max_error_rate, z, round(policy.window_s)
        )
        fired = at > 0
        out.append(
            ErrorAlarm(
                q,
                float(fired.mean()),
                tuple(float(np.mean(phase_at == k)) for k in range(1, len(hours) + 1)),
                float(np.median(at[fired])) / 3600 if fired.any() else None,
            )
        )
    return out


# --- report ---------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _phases(fractions: tuple[float, ...]) -> str:
    return ", ".join(f"{k}: {_pct(f)}" for k, f in enumerate(fractions, 1) if f > 0) or "—"


def _effect(value: float) -> str:
    return f"{value * 100:+.3g}%"


def _days(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def command_line(setting: Setting, runs: int, seed: int) -> str:
    effects = ",".join(f"{e:g}" for e in setting.effects)
    line = (
        f"python -m bench.policy_sim --runs {runs} --seed {seed} --rate {setting.rate:g} "
        f"--look-s {setting.look_s:g} --ctr {setting.ctr:g}"
    )
    return line if setting.effects == RELATIVE_EFFECTS else f"{line} --effects={effects}"


def markdown(
    rows: list[Row],
    setting: Setting,
    runs: int,
    seed: int,
    seconds: float,
    impressions: float,
    detections: list[Detection],
    alarms: list[ErrorAlarm],
) -> str:
    p = setting.policy
    splits = "/".join(f"{ph.split_bp / 100:g}" for ph in p.phases)
    lines = [
        f"`{command_line(setting, runs, seed)}` — `Policy()` defaults (splits {splits}%, "
        f"P(better) > 0.6 or inconclusive / 0.85 / 0.90, uplift > 1%, promote after "
        f"{p.promote_after_days:g} days; sequential alpha {p.sequential_alpha:g}, "
        f"N* {p.n_star:,.0f}; literal P(worse) > {p.guards.literal_p_worse:g}), "
        f"{setting.rate:g} impressions/s, champion CTR {setting.ctr:.1%}, a look every "
        f"{setting.look_s:g} s; {runs} replications per row; {seconds:.0f} s wall, "
        f"{impressions:.3g} impressions simulated ({impressions / seconds:.3g}/s). Segments, "
        "calibration, errors and latency are taken as healthy; sample_ratio is simulated.",
    ]
    for variant in VARIANTS:
        lines += [
            "",
            f"**{variant}** early rollback"
            + (" (the default)" if variant == p.early_rollback else ""),
            "",
            "| true relative CTR | promoted | rolled back | stopped | ended in phase | "
            "median days to end | median days to rollback |",
            "|---:|---:|---:|---:|:---|---:|---:|",
        ]
        for row in rows:
            o: VariantOutcome = getattr(row, variant)
            srm = o.rolled_back_by.get("sample_ratio", 0.0)
            rolled = _pct(o.rolled_back) + (f" ({_pct(srm)} sample_ratio)" if srm else "")
            lines.append(
                f"| {_effect(row.relative_effect)} | {_pct(o.promoted)} | {rolled} | "
                f"{_pct(o.stopped)} | {_phases(o.end_phase)} | {_days(o.median_days)} | "
                f"{_days(o.median_days_rolled_back)} |"
            )
    if detections:
        share = p.phase(1).split_bp / 10_000
        lines += [
            "",
            f"Broken challengers in phase 1 ({share:.0%} of {setting.rate:g} requests/s = "
            f"{setting.rate * share:g}/s to the challenger, 1 candidate per request; seconds "
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
        g = p.guards
        lines += [
            "",
            f"Healthy challengers with errors below the {g.max_error_rate:.1%} threshold, through "
            "a 12-day rollout at the minimum durations, `error_rate` judged every 1 s tick "
            "(cumulative, the evaluator's always-valid test):",
            "",
            "| true error rate | rolled back by error_rate | in phase | median hours to rollback |",
            "|---:|---:|:---|---:|",
        ]
        for a in alarms:
            hours = "—" if a.median_hours is None else f"{a.median_hours:.1f}"
            lines.append(
                f"| {a.error_rate:.2%} | {_pct(a.rolled_back)} | {_phases(a.in_phase)} | {hours} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=2000, help="replications per effect")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=250.0, help="impressions (= requests)/s")
    parser.add_argument("--look-s", type=float, default=60.0, help="seconds between looks")
    parser.add_argument("--ctr", type=float, default=0.02, help="champion CTR")
    parser.add_argument(
        "--effects",
        default=",".join(f"{e:g}" for e in RELATIVE_EFFECTS),
        help="true relative CTR differences, comma-separated",
    )
    parser.add_argument("--detection-runs", type=int, default=2000, help="0 skips")
    parser.add_argument("--error-runs", type=int, default=200, help="0 skips")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.runs <= 0 or args.rate <= 0 or args.look_s <= 0 or not 0 < args.ctr < 1:
        parser.error("--runs, --rate and --look-s must be positive and --ctr in (0, 1)")
    try:
        effects = tuple(float(x) for x in args.effects.split(",") if x.strip())
    except ValueError:
        parser.error(f"--effects must be comma-separated numbers, got {args.effects!r}")
    if not effects or any(not -1 < e < 1 / args.ctr - 1 for e in effects):
        parser.error("--effects must be relative differences keeping the CTR in (0, 1)")
    setting = Setting(rate=args.rate, ctr=args.ctr, look_s=args.look_s, effects=effects)
    started = time.perf_counter()
    rows, impressions = run(setting, args.runs, args.seed)
    seconds = time.perf_counter() - started
    detections, alarms = [], []
    if args.detection_runs > 0:
        detections = detection_times(setting.policy, args.rate, args.detection_runs, args.seed)
    if args.error_runs > 0:
        alarms = error_false_alarms(setting.policy, args.rate, runs=args.error_runs, seed=args.seed)
    total = time.perf_counter() - started
    print(markdown(rows, setting, args.runs, args.seed, seconds, impressions, detections, alarms))
    print(f"\nWall time: {total:.0f} s in all ({seconds:.0f} s for the outcome tables).")
    if args.json:
        document = {
            "command": command_line(setting, args.runs, args.seed),
            "setting": {k: v for k, v in asdict(setting).items() if k != "policy"},
            "runs": args.runs,
            "seed": args.seed,
            "seconds": round(seconds, 2),
            "seconds_total": round(total, 2),
            "impressions": impressions,
            "rows": [asdict(row) for row in rows],
            "detection": [asdict(d) for d in detections],
            "error_false_alarms": [asdict(a) for a in alarms],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "OUTCOMES",
    "RELATIVE_EFFECTS",
    "VARIANTS",
    "Broken",
    "Detection",
    "ErrorAlarm",
    "Row",
    "Setting",
    "VariantOutcome",
    "broken_challengers",
    "detection_times",
    "error_false_alarms",
    "main",
    "markdown",
    "phase_table",
    "run",
    "simulate",
]
