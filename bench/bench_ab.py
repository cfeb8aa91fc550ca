"""Benchmark: this checkout against a baseline revision, in one run: /predict's open-loop tail
during a rollout held in phase 4 with events flowing (the section where the evaluator's work
shows).

Two `rampart serve --workers 1` on core 0 (each with its evaluator), one from this checkout
(uncommitted changes included) and one from a git worktree of `--baseline`, each climbed to
phase 4 and paused there. Runs alternate A B, B A; during each the other server is stopped
(bench_predict_servers.paused) and the events (WrkEvents, core 1) go to the one measured.
bench/oloop.c on core 1 measures from the intended send time at `--rate`. Reported: p99 and
p99.9 per run, this checkout's ratio to the baseline per round, and the medians.

    python -m bench.bench_ab [--baseline HEAD] [--rate 6394] [--runs 8] [--seconds 10]

Run it under `flock /tmp/rampart-bench.lock`. Results: bench/results/ab_phase4.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_predict_clients as clients
from bench import bench_predict_servers as servers
from bench.bench_predict import alternate
from harness.serve_process import Serve

HERE = Path(__file__).resolve().parent.parent
ORDER = ("change", "baseline")


def worktree(root: Path, revision: str) -> Path:
    """A detached git worktree of `revision` under `root` (removed by `drop_worktree`)."""
    path = root / "baseline"
    subprocess.run(
        ["git", "-C", str(HERE), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(HERE), "worktree", "remove", "--force", str(path)],
        check=False,
        capture_output=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="this checkout against a baseline, phase 4")
    parser.add_argument("--baseline", default="HEAD", help="a git revision")
    parser.add_argument("--rate", type=float, default=6394.0)
    parser.add_argument("--runs", type=int, default=8, help="rounds of A B")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events-rate", type=float, default=200.0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    servers.exit_cleanly_on_sigterm()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    revision = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", args.baseline],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    report: dict[str, Any] = {
        "setup": "two rampart serve --workers 1 on core 0 in phase 4, alternately (the other "
        "stopped); WrkEvents and oloop on core 1",
        "baseline": revision,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="rampart-ab-") as tmp:
        root = Path(tmp)
        base = worktree(root, revision)
        live: dict[str, Serve] = {}
        try:
            body_file = clients.write_bodies(
                root / "bodies.bin", servers.bodies(servers.n_features(), 1, False)
            )
            for name, cwd in (("change", None), ("baseline", base)):
                serve = servers.start_rampart(root / name, servers.rollout_config(), cwd=cwd)
                live[name] = serve
                with servers.paused([s.proc.pid for n, s in live.items() if n != name and s.proc]):
                    report[f"{name}_phase_4_after_s"] = servers.hold_phase4(serve)

            def one(name: str) -> dict[str, Any]:
                serve = live[name]
                others = [s.proc.pid for n, s in live.items() if n != name and s.proc]
                with (
                    servers.paused(others),
                    servers.events_flowing(serve, args.events_rate, root) as events,
                ):
                    serve.wait_for_evaluator()
                    port = servers.port_of(serve)
                    result = clients.open_loop(port, body_file, args.rate, args.seconds).report()
                result["events"] = events
                status = serve.status()
                if servers.phase_of(status) != 4:
                    raise RuntimeError(f"{name} left phase 4: {status.get('last_rollout')}")
                print(f"  {name}: p99 {result['p99_ms']} p99.9 {result['p99.9_ms']} ms", flush=True)
                return result

            listed = alternate(args.runs, one, ORDER)
        finally:
            for serve in live.values():
                serve.stop()
            drop_worktree(base)
    pairs = list(zip(listed["change"], listed["baseline"], strict=True))
    report["runs"] = listed
    for q in ("p99", "p99.9"):
        ratios = [a[f"{q}_ms"] / b[f"{q}_ms"] for a, b in pairs]
        report[f"{q}_ratio_per_round"] = ratios
        report[f"{q}_ratio_median"] = statistics.median(ratios)
        report[f"{q}_median_ms"] = {
            n: statistics.median(r[f"{q}_ms"] for r in listed[n]) for n in ORDER
        }
    report["load_average_after"] = os.getloadavg()
    (out / "ab_phase4.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
