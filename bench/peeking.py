"""The peeking problem, by Monte Carlo: how often each early-rollback rule fires, per true effect.

Phase 3 by default: 250 impressions/s in total, challenger share 20%, champion CTR 2%, 3 days,
looked at once a minute. Per look, the new impressions are split Binomial(n, share) and each arm's
clicks are Binomial(impressions, CTR); then both rules are evaluated on the cumulative counts with
the evaluator's own kernels (guardrails.stats):

- literal:    P(challenger worse) > 0.9 (Beta(1, 1) posteriors, exact/normal as in `compare`);
- sequential: the always-valid upper bound on p_c - p_b is below 0 (`sequential_difference`).

    python -m bench.peeking --runs 2000 --seed 1 [--json FILE] [--n-star N] [--alpha A]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from guardrails.stats import (
    DEFAULT_N_STAR,
    EXACT_CUTOFF,
    beta_compare_kernel,
    sequential_bound_kernel,
    sequential_rho,
)

RELATIVE_EFFECTS = (-0.05, -0.02, 0.0, 0.01)


@dataclass(frozen=True)
class Setting:
    rate: float = 250.0  # impressions per second, both arms
    share: float = 0.20  # challenger share of traffic
    ctr: float = 0.02  # champion CTR
    days: float = 3.0
    look_seconds: float = 60.0
    literal_threshold: float = 0.9
    alpha: float = 0.05
    n_star: float = DEFAULT_N_STAR


@dataclass(frozen=True)
class RuleOutcome:
    fired: float  # fraction of runs in which the rule fired at some look
    median_hours: float | None  # median time to first firing, over the runs that fired


@dataclass(frozen=True)
class Row:
    relative_effect: float
    literal: RuleOutcome
    sequential: RuleOutcome


@njit(cache=True)
def simulate(
    runs: int,
    looks: int,
    per_look: int,
    share: float,
    ctr_champion: float,
    ctr_challenger: float,
    literal_threshold: float,
    alpha: float,
    rho: float,
    cutoff: float,
    seed: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Look index (1-based) at which each rule first fired in each run, -1 if never."""
    np.random.seed(seed)
    literal_at = np.full(runs, -1, dtype=np.int64)
    sequential_at = np.full(runs, -1, dtype=np.int64)
    for r in range(runs):
        n1 = 0
        c1 = 0
        n2 = 0
        c2 = 0
        for k in range(looks):
            new2 = np.random.binomial(per_look, share)
            new1 = per_look - new2
            n1 += new1
            n2 += new2
            c1 += np.random.binomial(new1, ctr_champion)
            c2 += np.random.binomial(new2, ctr_challenger)
            if n1 == 0 or n2 == 0:
                continue
            if literal_at[r] < 0:
                _, p_worse, _ = beta_compare_kernel(
                    1.0 + c1, 1.0 + n1 - c1, 1.0 + c2, 1.0 + n2 - c2, cutoff
                )
                if p_worse > literal_threshold:
                    literal_at[r] = k + 1
            if sequential_at[r] < 0:
                d, half_width = sequential_bound_kernel(
                    float(n1), float(c1), float(n2), float(c2), alpha, rho
                )
                if d + half_width < 0.0:
                    sequential_at[r] = k + 1
            if literal_at[r] >= 0 and sequential_at[r] >= 0:
                break
    return literal_at, sequential_at


def _outcome(first_look: npt.NDArray[np.int64], look_seconds: float) -> RuleOutcome:
    fired = first_look[first_look > 0]
    median = float(np.median(fired)) * look_seconds / 3600.0 if fired.size else None
    return RuleOutcome(fired.size / first_look.size, median)


def run(setting: Setting, runs: int, seed: int) -> list[Row]:
    looks = round(setting.days * 86400.0 / setting.look_seconds)
    per_look = round(setting.rate * setting.look_seconds)
    rho = sequential_rho(setting.alpha, setting.n_star)
    rows = []
    for i, effect in enumerate(RELATIVE_EFFECTS):
        literal_at, sequential_at = simulate(
            runs,
            looks,
            per_look,
            setting.share,
            setting.ctr,
            setting.ctr * (1.0 + effect),
            setting.literal_threshold,
            setting.alpha,
            rho,
            float(EXACT_CUTOFF),
            seed * 1000 + i,
        )
        rows.append(
            Row(
                effect,
                _outcome(literal_at, setting.look_seconds),
                _outcome(sequential_at, setting.look_seconds),
            )
        )
    return rows


def _hours(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} h"


def markdown(rows: list[Row], setting: Setting, runs: int) -> str:
    lines = [
        f"Phase-3 setting: {setting.rate:g} impressions/s, challenger share {setting.share:.0%}, "
        f"champion CTR {setting.ctr:.1%}, {setting.days:g} days, a look every "
        f"{setting.look_seconds:g} s; {runs} runs per row. Literal rule: P(worse) > "
        f"{setting.literal_threshold:g}. Sequential: alpha = {setting.alpha:g}, "
        f"N* = {setting.n_star:,.0f} impressions.",
        "",
        "| challenger relative CTR | literal fires | literal median time | "
        "sequential fires | sequential median time |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.relative_effect:+.0%} | {row.literal.fired:.1%} | "
            f"{_hours(row.literal.median_hours)} | {row.sequential.fired:.1%} | "
            f"{_hours(row.sequential.median_hours)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peeking", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--n-star", type=float, default=DEFAULT_N_STAR)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--days", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.runs <= 0:
        parser.error("--runs must be positive")
    setting = Setting(alpha=args.alpha, n_star=args.n_star, days=args.days)
    started = time.perf_counter()
    rows = run(setting, args.runs, args.seed)
    elapsed = time.perf_counter() - started
    print(markdown(rows, setting, args.runs))
    if args.json:
        document = {
            "setting": asdict(setting),
            "runs": args.runs,
            "seed": args.seed,
            "seconds": round(elapsed, 2),
            "rows": [asdict(row) for row in rows],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "RELATIVE_EFFECTS",
    "Row",
    "RuleOutcome",
    "Setting",
    "main",
    "markdown",
    "run",
    "simulate",
]
