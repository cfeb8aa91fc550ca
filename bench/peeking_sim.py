"""The peeking problem, by Monte Carlo: how often each early-rollback rule fires, per true effect.

Phase 3 of `Policy()` by default: 250 impressions/s in total, the phase's challenger share (20%),
champion CTR 2%, 3 days, looked at once a minute. Per look, the new impressions are split
Binomial(n, share) and each arm's clicks are Binomial(impressions, CTR); then `ab_worse` is
judged on the cumulative counts under both of the policy's early-rollback rules, by
`bench.policy_kernel.ab_worse_kernel` (held to the production check by its tests):

- literal:    P(challenger worse) > literal_p_worse (0.9; Beta(1, 1) posteriors, as `compare`);
- sequential: the always-valid upper bound on p_c - p_b is below 0 (`sequential_difference`).

    python -m bench.peeking_sim --runs 2000 --seed 1 [--json FILE] [--n-star N] [--alpha A]
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
from numba import njit

from bench import policy_kernel as kernel
from bench.policy_kernel import ab_worse_kernel
from bench.policy_sim import VARIANTS
from guardrails.measures import FAIL
from guardrails.policy import DAY, HOUR, Policy

RELATIVE_EFFECTS = (-0.05, -0.02, 0.0, 0.01)


@dataclass(frozen=True)
class Setting:
    rate: float = 250.0  # impressions per second, both arms
    ctr: float = 0.02  # champion CTR
    days: float = 3.0
    look_seconds: float = 60.0
    phase: int = 3  # whose split the challenger gets
    policy: Policy = field(default_factory=Policy)

    @property
    def share(self) -> float:
        return float(kernel.phase_table(self.policy)[self.phase - 1]["share"])


@dataclass(frozen=True)
class RuleOutcome:
    fired: float  # fraction of runs in which the rule fired at some look
    median_hours: float | None  # median time to first firing, over the runs that fired


@dataclass(frozen=True)
class Row:
    relative_effect: float
    rules: dict[str, RuleOutcome]  # early_rollback variant -> how often ab_worse fired


@njit(cache=True)
def simulate(
    runs: int,
    looks: int,
    per_look: int,
    share: float,
    ctr_champion: float,
    ctr_challenger: float,
    variants: npt.NDArray[np.void],
    seed: int,
) -> npt.NDArray[np.int64]:
    """first[run, variant]: the look (1-based) at which ab_worse first fails under each RULES
    record of `variants`, -1 if never."""
    np.random.seed(seed)
    first = np.full((runs, variants.shape[0]), -1, dtype=np.int64)
    for r in range(runs):
        n_b = c_b = n_c = c_c = 0.0
        left = variants.shape[0]
        for k in range(looks):
            new_c = np.random.binomial(per_look, share)
            new_b = per_look - new_c
            n_b += new_b
            n_c += new_c
            c_b += np.random.binomial(new_b, ctr_champion)
            c_c += np.random.binomial(new_c, ctr_challenger)
            for v in range(variants.shape[0]):
                if first[r, v] < 0 and ab_worse_kernel(variants[v], n_b, c_b, n_c, c_c) == FAIL:
                    first[r, v] = k + 1
                    left -= 1
            if left == 0:
                break
    return first


def _outcome(first_look: npt.NDArray[np.int64], look_seconds: float) -> RuleOutcome:
    fired = first_look[first_look > 0]
    median = float(np.median(fired)) * look_seconds / HOUR if fired.size else None
    return RuleOutcome(fired.size / first_look.size, median)


def run(setting: Setting, runs: int, seed: int) -> list[Row]:
    looks = round(setting.days * DAY / setting.look_seconds)
    per_look = round(setting.rate * setting.look_seconds)
    variants = np.array(
        [kernel.rules(dataclasses.replace(setting.policy, early_rollback=v)) for v in VARIANTS],
        dtype=kernel.RULES,
    )
    rows = []
    for i, effect in enumerate(RELATIVE_EFFECTS):
        first = simulate(
            runs,
            looks,
            per_look,
            setting.share,
            setting.ctr,
            setting.ctr * (1.0 + effect),
            variants,
            seed * 1000 + i,
        )
        outcomes: dict[str, RuleOutcome] = {
            v: _outcome(first[:, j], setting.look_seconds) for j, v in enumerate(VARIANTS)
        }
        rows.append(Row(effect, outcomes))
    return rows


def _hours(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} h"


def markdown(rows: list[Row], setting: Setting, runs: int) -> str:
    p = setting.policy
    lines = [
        f"Phase-{setting.phase} setting: {setting.rate:g} impressions/s, challenger share "
        f"{setting.share:.0%}, champion CTR {setting.ctr:.1%}, {setting.days:g} days, a look "
        f"every {setting.look_seconds:g} s; {runs} runs per row. Literal rule: P(worse) > "
        f"{p.guards.literal_p_worse:g}. Sequential: alpha = {p.sequential_alpha:g}, "
        f"N* = {p.n_star:,.0f} impressions.",
        "",
        "| challenger relative CTR | "
        + " | ".join(f"{v} fires | {v} median time" for v in VARIANTS)
        + " |",
        "|---:|" + "---:|---:|" * len(VARIANTS),
    ]
    for row in rows:
        cells = [f"{o.fired:.1%} | {_hours(o.median_hours)}" for o in row.rules.values()]
        lines.append(f"| {row.relative_effect:+.0%} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peeking_sim", description=__doc__.split("\n")[0]
    )
    default = Policy()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--n-star", type=float, default=default.sequential_n_star)
    parser.add_argument("--alpha", type=float, default=default.sequential_alpha)
    parser.add_argument("--days", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.runs <= 0:
        parser.error("--runs must be positive")
    policy = dataclasses.replace(
        default, sequential_alpha=args.alpha, sequential_n_star=args.n_star
    )
    setting = Setting(days=args.days, policy=policy)
    started = time.perf_counter()
    rows = run(setting, args.runs, args.seed)
    elapsed = time.perf_counter() - started
    print(markdown(rows, setting, args.runs))
    if args.json:
        summary = {k: v for k, v in asdict(setting).items() if k != "policy"}
        summary |= {"share": setting.share, "alpha": args.alpha, "n_star": args.n_star}
        document = {"setting": summary, "runs": args.runs, "seed": args.seed}
        document |= {"seconds": round(elapsed, 2), "rows": [asdict(row) for row in rows]}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
