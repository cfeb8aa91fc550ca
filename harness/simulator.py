"""The ad-server simulator: open-loop traffic from the synthetic world, with impressions and clicks.

At a fixed rate it draws requests of N candidate ads from `harness.ground_truth`, asks
`POST /predict` to score them, shows the top-scored one and posts its impression and, with the
shown ad's true click probability, a click to `POST /events`; it reports when it falls behind its
schedule instead of quietly sending less. Loopback targets only. This module is its entry point
(`SimConfig`, `simulate`, `run` and the command line); the parts:

    simulator_config    SimConfig: one run's settings, checked at construction
    simulator_batches   Batch, make_batch: pre-encoded /predict bodies and their ground truth
    simulator_run       the open loop over aiohttp: dispatcher, answer and event handlers,
                        champion_features, simulate, run
    simulator_stats     SimStats: what a run saw (answers by arm, a timeline, latency)

    python -m harness.simulator --url http://127.0.0.1:8000 --rate 300 --seconds 30 \\
        --candidates 4 --seed 1 --mix device_type=mobile:0.2,desktop:0.3,tablet:0.5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import aiohttp

from harness import ground_truth
from harness.simulator_batches import Batch, make_batch
from harness.simulator_config import SimConfig
from harness.simulator_run import (
    SimulatorError,
    champion_features,
    connection_failure,
    run,
    simulate,
)
from harness.simulator_stats import ArmStats, SimStats, Tick

__all__ = [
    "ArmStats",
    "Batch",
    "SimConfig",
    "SimStats",
    "SimulatorError",
    "Tick",
    "champion_features",
    "connection_failure",
    "main",
    "make_batch",
    "run",
    "simulate",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.simulator", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the sidecar (loopback only)")
    p.add_argument("--rate", type=float, default=300.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--candidates", type=int, default=4, help="ads per request")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--mix", action="append", default=[], help="e.g. device_type=mobile:0.2,tablet:0.8"
    )
    p.add_argument("--click-delay", type=float, default=0.0, help="seconds before a click")
    p.add_argument("--named", action="store_true", help="named-feature rows (default positional)")
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals")
    p.add_argument("--max-in-flight", type=int, default=128)
    p.add_argument("--json", type=Path, help="write the stats here")
    args = p.parse_args(argv)
    try:
        config = SimConfig(
            args.url, args.rate, args.seconds, candidates=args.candidates, seed=args.seed,
            mix=ground_truth.parse_mix(";".join(args.mix)) or None, click_delay_s=args.click_delay,
            positional=not args.named, poisson=args.poisson, max_in_flight=args.max_in_flight,
        )  # fmt: skip
    except ValueError as e:
        print(f"harness.simulator: {e}", file=sys.stderr)
        return 2
    try:
        stats = run(config)
    except (SimulatorError, aiohttp.ClientError, OSError) as e:
        print(f"harness.simulator: {e}", file=sys.stderr)
        return 1
    summary = stats.to_dict()
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "timeline"}, indent=2))
    if stats.fell_behind:
        print(
            f"harness.simulator: WARNING: fell behind the schedule ({stats.late} late, "
            f"{stats.unsent} unsent of {stats.scheduled})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
