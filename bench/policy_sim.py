"""Operating characteristics of the whole five-phase policy, by Monte Carlo.

Each replication walks a challenger from phase 1 to its end on synthetic traffic (no HTTP):
per look, Poisson(rate x look_s) impressions, Binomial(n, split) of them to the challenger,
Binomial clicks per arm at the champion's CTR and at the challenger's (champion x (1 + effect)).
Each look is decided by `bench.policy_kernel.decide_kernel`: the production policy (every check
of `checks.evaluate`, then `policy.decide`) with the thresholds and phases of a `Policy`, held
to that production code decision for decision by tests/bench/test_policy_kernel.py. The
challenger is otherwise healthy (no errors, fast, calibrated, the champion's prediction
distribution, all traffic in one segment cell): sample_ratio, clicks_per_10k, ab_worse,
segment_degradation and the advance criteria are judged on the simulated counts; the other
checks wait for their samples and pass. Two variants of early rollback each walk the same
traffic (the same seed) until one ends: `sequential` (the default always-valid bound) and
`literal` (P(worse) > 0.9).

After the outcome tables it prints bench/breach_sim.py's: how long the phase-1 breach checks
take to catch a broken challenger, and how often error_rate rolls back a healthy one.

    python -m bench.policy_sim --runs 2000 --seed 1 [--rate 250] [--look-s 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from bench import breach_sim
from bench import policy_kernel as kernel
from bench.policy_kernel import ADVANCE, GUARDRAILS, HOLD, PROMOTE, ROLLBACK, STOP, decide_kernel
from guardrails.policy import DAY, EarlyRollback, Policy

RELATIVE_EFFECTS = (-0.10, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.10)
VARIANTS: tuple[EarlyRollback, ...] = ("sequential", "literal")
END = np.dtype(
    [
        ("action", np.int64),  # PROMOTE, ROLLBACK or STOP
        ("phase", np.int64),  # 1-5, the phase it ended in
        ("guardrail", np.int64),  # a code of policy_kernel.GUARDRAILS
        ("seconds", np.float64),
        ("impressions", np.float64),  # both arms, to the end
    ]
)


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
    rolled_back_by: dict[str, float]  # guardrail -> fraction of runs
    stopped_by: dict[str, float]  # guardrail (or max_duration) -> fraction of runs
    median_days: float  # time to the end, all runs
    median_days_rolled_back: float | None


@dataclass(frozen=True)
class Row:
    relative_effect: float
    sequential: VariantOutcome
    literal: VariantOutcome


# --- the walk -----------------------------------------------------------------------------------


@njit(cache=True)
def walk(
    seed: int,
    per_look: float,
    look_s: float,
    ctr_b: float,
    ctr_c: float,
    phases: npt.NDArray[np.void],
    rules: np.record,
) -> tuple[int, int, int, float, float]:
    """One rollout to its end: (action, phase, guardrail, seconds, impressions). Looks land on
    multiples of look_s from each phase's start, as evaluator ticks do from theirs."""
    np.random.seed(seed)
    n_b = c_b = n_c = c_c = 0.0  # since the rollout started (champion) / the challenger loaded
    req_b = req_c = 0.0  # since the phase started, for sample_ratio
    phase = 1
    looks = phase_looks = 0  # counted, not summed in floats: minimums are compared exactly
    while True:
        new = np.random.poisson(per_look)
        new_c = np.random.binomial(new, phases[phase - 1].share)
        new_b = new - new_c
        n_b += new_b
        n_c += new_c
        req_b += new_b
        req_c += new_c
        c_b += np.random.binomial(new_b, ctr_b)
        c_c += np.random.binomial(new_c, ctr_c)
        looks += 1
        phase_looks += 1
        t = looks * look_s
        action, guardrail = decide_kernel(
            phases, rules, phase, False, n_b, c_b, n_c, c_c, req_b, req_c, phase_looks * look_s, t
        )
        if action == ADVANCE:
            phase += 1
            phase_looks = 0
            req_b = req_c = 0.0
        elif action != HOLD:
            return action, phase, guardrail, t, n_b + n_c


@njit(cache=True, parallel=True)
def simulate(
    out: npt.NDArray[np.void],
    seeds: npt.NDArray[np.int64],
    per_look: float,
    look_s: float,
    ctr_b: float,
    ctr_c: float,
    phases: npt.NDArray[np.void],
    variants: npt.NDArray[np.void],
) -> None:
    """out[run, variant] = the END of `walk` under each RULES record of `variants`.

    Each run seeds its thread's generator from its own seed, so results do not depend on how
    runs are spread over threads, and every variant of a run sees the same traffic."""
    for r in prange(seeds.shape[0]):
        for v in range(variants.shape[0]):
            e = out[r, v]
            e.action, e.phase, e.guardrail, e.seconds, e.impressions = walk(
                seeds[r], per_look, look_s, ctr_b, ctr_c, phases, variants[v]
            )


def _fractions(ends: npt.NDArray[np.void], action: int) -> dict[str, float]:
    ended = ends["action"] == action
    codes = sorted(set(ends["guardrail"][ended].tolist()))
    return {GUARDRAILS[c]: float(np.mean(ended & (ends["guardrail"] == c))) for c in codes}


def _summary(ends: npt.NDArray[np.void], phases: int) -> VariantOutcome:
    action, seconds = ends["action"], ends["seconds"]
    rolled = action == ROLLBACK
    return VariantOutcome(
        promoted=float(np.mean(action == PROMOTE)),
        rolled_back=float(np.mean(rolled)),
        stopped=float(np.mean(action == STOP)),
        end_phase=tuple(float(np.mean(ends["phase"] == k)) for k in range(1, phases + 1)),
        rolled_back_by=_fractions(ends, ROLLBACK),
        stopped_by=_fractions(ends, STOP),
        median_days=float(np.median(seconds)) / DAY,
        median_days_rolled_back=float(np.median(seconds[rolled])) / DAY if rolled.any() else None,
    )


def run(setting: Setting, runs: int, seed: int) -> tuple[list[Row], float]:
    """One row per effect, and the impressions simulated in all."""
    p = setting.policy
    phases = kernel.phase_table(p)
    variants = np.array(
        [kernel.rules(dataclasses.replace(p, early_rollback=v)) for v in VARIANTS],
        dtype=kernel.RULES,
    )
    rows, impressions = [], 0.0
    for i, effect in enumerate(setting.effects):
        seeds = np.random.SeedSequence([seed, i]).generate_state(runs).astype(np.int64)
        out = np.zeros((runs, len(VARIANTS)), dtype=END)
        simulate(
            out,
            seeds,
            setting.rate * setting.look_s,
            setting.look_s,
            setting.ctr,
            setting.ctr * (1.0 + effect),
            phases,
            variants,
        )
        impressions += float(out["impressions"].sum())
        outcomes = {v: _summary(out[:, j], len(p.phases)) for j, v in enumerate(VARIANTS)}
        rows.append(Row(effect, **outcomes))
    return rows, impressions


# --- report ---------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _phases(fractions: tuple[float, ...]) -> str:
    return ", ".join(f"{k}: {_pct(f)}" for k, f in enumerate(fractions, 1) if f > 0) or "—"


def _by(fractions: dict[str, float], usual: str) -> str:
    """The guardrails other than the usual one that ended runs, with their shares."""
    other = [f"{_pct(f)} {name}" for name, f in fractions.items() if name != usual and f > 0]
    return f" ({', '.join(other)})" if other else ""


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
    detections: list[breach_sim.Detection],
    alarms: list[breach_sim.ErrorAlarm],
) -> str:
    p = setting.policy
    splits = "/".join(f"{ph.split_bp / 100:g}" for ph in p.phases)
    better = " / ".join(
        f"{ph.p_better:g}" + (" or inconclusive" if ph.inconclusive_ok else "")
        for ph in p.phases
        if ph.p_better > 0
    )
    uplift = " / ".join(f"{ph.min_uplift:.0%}" for ph in p.phases if ph.min_uplift > -1)
    lines = [
        f"`{command_line(setting, runs, seed)}` — the policy of `Policy()` (splits {splits}%, "
        f"P(better) > {better}, uplift > {uplift}, promote after {p.promote_after_days:g} "
        f"days; sequential alpha {p.sequential_alpha:g}, N* {p.n_star:,.0f}; literal P(worse) > "
        f"{p.guards.literal_p_worse:g}) through `bench.policy_kernel`, which the tests hold to "
        f"`checks.evaluate` + `policy.decide` decision for decision; {setting.rate:g} "
        f"impressions/s, champion CTR {setting.ctr:.1%}, a look every {setting.look_s:g} s; "
        f"{runs} replications per row; {seconds:.0f} s wall, {impressions:.3g} impressions "
        f"simulated ({impressions / seconds:.3g}/s). The challenger is otherwise healthy (no "
        "errors, fast, calibrated, one segment cell): sample_ratio, clicks_per_10k, ab_worse, "
        "segment_degradation and the advance criteria are judged on the simulated counts.",
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
            rolled = _pct(o.rolled_back) + _by(o.rolled_back_by, "ab_worse")
            stopped = _pct(o.stopped) + _by(o.stopped_by, "max_duration")
            lines.append(
                f"| {_effect(row.relative_effect)} | {_pct(o.promoted)} | {rolled} | "
                f"{stopped} | {_phases(o.end_phase)} | {_days(o.median_days)} | "
                f"{_days(o.median_days_rolled_back)} |"
            )
    if detections or alarms:
        lines += breach_sim.markdown(detections, alarms, p, setting.rate)
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
        detections = breach_sim.detection_times(
            setting.policy, args.rate, args.detection_runs, args.seed
        )
    if args.error_runs > 0:
        alarms = breach_sim.error_false_alarms(
            setting.policy, args.rate, runs=args.error_runs, seed=args.seed
        )
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
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
