"""The README's /predict tables from bench/results (predict.json, predict_open.json,
predict_tail*.json), as Markdown on stdout.

    python -m bench.bench_predict_report [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _opt(x: float | None) -> str:
    return "" if x is None else _f(x)


def throughput(report: dict[str, Any]) -> list[str]:
    rows = [
        "| closed loop (wrk, 16 connections) | rampart req/s | bare req/s | ratio (per round) "
        "| ratio of requests per server CPU-second | target |",
        "|---|---|---|---|---|---|",
    ]
    asgi = any("rampart-asgi" in c for c in report["closed_loop"].values())
    if asgi:  # `--with-asgi`: rampart answering through its ASGI handlers only, beside
        rows[0] += " rampart-asgi req/s | its ratio per server CPU-second |"
        rows[1] += "---|---|"
    for name, c in report["closed_loop"].items():
        per_round = ", ".join(_f(r) for r in c["ratio_per_round"])
        row = (
            f"| {name} | {_f(c['median_rps']['rampart'], 0)} | {_f(c['median_rps']['bare'], 0)} "
            f"| {_f(c['ratio'])} ({per_round}) | {_opt(c.get('cpu_ratio'))} | ≥ {c['target']:g} |"
        )
        if asgi:
            via_asgi = c["rampart-asgi"]["cpu_ratio"]
            row += f" {_f(c['median_rps']['rampart-asgi'], 0)} | {_f(via_asgi)} |"
        rows.append(row)
    return rows


def open_loop(report: dict[str, Any]) -> list[str]:
    rows = [
        "| open loop (oloop, 32 connections) | | p50 ms | p99 ms | p99.9 ms | max ms "
        "| client jitter p99 ms | server waiting for the CPU, s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("open_loop", "no rollout"), ("open_loop_rollout", "phase 4, events")):
        if key not in report:
            continue
        s = report[key]
        for n in s["median"]:  # rampart, bare, and the control bare server with --control
            m = s["median"][n]
            rows.append(
                f"| {label} at {s['rate']:,} req/s | {n} | {_f(m['p50_ms'])} | {_f(m['p99_ms'])} "
                f"| {_f(m['p99.9_ms'])} | {_f(m['max_ms'])} | {_f(m['jitter_p99_ms'])} "
                f"| {_opt(m.get('server_runqueue_wait_s'))} |"
            )
        per_run = ", ".join(_f(x) for x in s["p99_ratio_per_run"])
        per_run_999 = ", ".join(_f(x) for x in s["p99.9_ratio_per_run"])
        rows.append(
            f"| {label}: rampart / bare | | | {_f(s['p99_ratio'])} (runs: {per_run}; target ≤ 1.25 "
            f"each) | {_f(s['p99.9_ratio'])} (runs: {per_run_999}; ≤ 1.5) | | | |"
        )
        if "control_p99_ratio_per_run" in s:  # the same server against itself: the noise floor
            per_run = ", ".join(_f(x) for x in s["control_p99_ratio_per_run"])
            per_run_999 = ", ".join(_f(x) for x in s["control_p99.9_ratio_per_run"])
            rows.append(
                f"| {label}: bare-control / bare | | | {_f(s['control_p99_ratio'])} (runs: "
                f"{per_run}) | {_f(s['control_p99.9_ratio'])} (runs: {per_run_999}) | | | |"
            )
    return rows


def stall_sources(tail: dict[str, Any], label: str) -> list[str]:
    rows = [
        f"| {label}: source | runs every | wall time p50 / max | CPU p50 "
        "| slow requests it overlaps | core-0 share of stall time |",
        "|---|---|---|---|---|---|",
    ]
    runs = tail["runs"]
    first = runs[0]
    share: dict[str, list[float]] = {}
    for r in runs:
        for who, v in (r.get("core0_in_stalls") or {}).items():
            share.setdefault(who, []).append(v["share_of_slow_requests"])
    for s in first["sources"]:
        period = f"{s['period_ms']:.0f} ms" if s["period_ms"] is not None else "once"
        cpu = f"{s['cpu_p50_us']:.0f} µs" if "cpu_p50_us" in s else ""
        rows.append(
            f"| {s['source']} | {period} | {s['duration_p50_us']:.0f} / "
            f"{s['duration_max_us']:.0f} µs | {cpu} | {s['slow_requests_overlapped']} of "
            f"{first['slow_requests']} | |"
        )
    for who, v in sorted(share.items(), key=lambda kv: -max(kv[1])):
        rows.append(
            f"| core 0 held by: {who} | | | | | {', '.join(_f(x * 100, 1) + '%' for x in v)} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the README's /predict tables")
    parser.add_argument("--results", default="bench/results")
    args = parser.parse_args(argv)
    res = Path(args.results)
    report = json.loads((res / "predict.json").read_text())
    print("\n".join(throughput(report)), end="\n\n")
    print("\n".join(open_loop(report)), end="\n\n")
    if (res / "predict_open.json").is_file():  # `--open-rate`: the open loop alone
        print("\n".join(open_loop(json.loads((res / "predict_open.json").read_text()))), end="\n\n")
    for name, label in (
        ("predict_tail.json", "no rollout"),
        ("predict_tail_rollout.json", "phase 4"),
    ):
        if (res / name).is_file():
            print("\n".join(stall_sources(json.loads((res / name).read_text()), label)), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
