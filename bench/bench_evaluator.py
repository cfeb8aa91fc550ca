"""Benchmark: the evaluator's tick time, and rollback latency end to end.

1. Tick time (`bench.evaluator_tick`): an in-process `Evaluator` over slabs of synthetic
   traffic with a rollout in phase 4, for the default segment space (512 cells) and a
   10,000-cell one; targets 2 ms / 20 ms.
2. Rollback latency (`bench.evaluator_rollback`): a real `rampart serve` rolling out
   `broken_nan`, from the first answer with a fallback to every answer clean again;
   target one tick + 100 ms (1100 ms).

    python -m bench.bench_evaluator [--ticks 300] [--trials 10] [--quick]
        [--only tick|rollback] [--out bench/results/evaluator.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench.evaluator_rollback import rollback_latency
from bench.evaluator_tick import SPACES, tick_time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ticks", type=int, help="timed ticks per segment space (300)")
    parser.add_argument("--trials", type=int, help="rollback trials (10)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 20 ticks, 1 short rollback trial"
    )
    parser.add_argument("--only", choices=("tick", "rollback"))
    parser.add_argument("--rate", type=float, default=500.0, help="client requests/s (500)")
    parser.add_argument("--out", default="bench/results/evaluator.json")
    args = parser.parse_args(argv)
    if args.ticks is None:
        args.ticks = 20 if args.quick else 300
    if args.trials is None:
        args.trials = 1 if args.quick else 10
    args.warmup = 5 if args.quick else 20
    args.healthy_s = 1.0 if args.quick else 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"quick": args.quick}
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if args.only in (None, "tick"):
        report["tick"] = [
            tick_time(space, ticks=args.ticks, warmup=args.warmup, cpu=cpu) for space in SPACES
        ]
    if args.only in (None, "rollback"):
        report["rollback"] = rollback_latency(
            trials=args.trials, rate=args.rate, healthy_s=args.healthy_s
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary_text(report))
    return 0


def summary_text(report: dict[str, Any]) -> str:
    lines = []
    if report.get("quick"):
        lines.append("SMOKE MODE (--quick): not figures to publish")
    for t in report.get("tick", []):
        d, f, s = t["decision_ms"], t["full_tick_ms"], t["snapshot_take_ms"]
        u, p = t["unread_tick_ms"], t["publish_ms"]
        lines.append(
            f"tick, {t['cells']} cells, {t['workers']} slabs, phase 4, {t['ticks']} ticks each: "
            f"decision median {d['median']:.3f} / p90 {d['p90']:.3f} / p99 {d['p99']:.3f} / "
            f"max {d['max']:.3f} ms (target {t['target_ms']:g} ms, p99 "
            f"{t['ratio_to_target']['p99']:.2f}x); whole tick with a /status reader "
            f"median {f['median']:.3f} / p99 {f['p99']:.3f} ms (publishing alone median "
            f"{p['median']:.3f} / p99 {p['p99']:.3f}); unread median {u['median']:.3f} / "
            f"p99 {u['p99']:.3f} ms; snapshot.take alone median {s['median']:.3f} ms"
        )
    r = report.get("rollback")
    if r:
        head = (
            f"rollback end to end, {r['valid_trials']}/{r['trials']} trials "
            f"at {r['rate_rps']:g} req/s: "
        )
        if "latency_ms" in r:
            lat = r["latency_ms"]
            lines.append(
                head + f"median {lat['median']:.0f} ms, max {lat['max']:.0f} ms "
                f"(target {r['target_ms']:.0f} ms; the previous policy allowed "
                f"{r['previous_policy_ms'] / 1000:.0f} s)"
            )
        else:
            lines.append(
                head + "no valid trial: " + "; ".join(str(x.get("why")) for x in r["runs"])
            )
        for w in r["warmup_runs"]:
            seen = f"{w['latency_ms']:.0f} ms" if w["valid"] else f"invalid, {w['why']}"
            lines.append(f"  uncounted warm-up trial (the evaluator's first rollout): {seen}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
