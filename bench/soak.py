"""Soak: `rampart serve` under steady load for minutes, with events and a running rollout.

The server (every process of it) is pinned to core 0, wrk to core 1 (bench/soak_client.lua:
one JSON row per /predict, an impression for every answer and a click for some, posted to
/events in batches with the answer's token). First a closed-loop run measures the maximum
/predict rate of this configuration; then the soak runs at a fraction of it (half by default),
one wrk run per minute, and between minutes samples every server process's RSS, PSS and open
file descriptors.

What must hold, and is reported (exit 1 if not):
- 0 failed requests (non-2xx or socket errors) and 0 rejected events;
- the server's counters (`/metrics`) moved by exactly what the client sent and saw answered:
  /predict requests per arm, impressions and clicks per arm;
- RSS and open descriptors flat after the first minutes (the growth after warm-up is reported).

    python -m bench.soak --minutes 10 [--workers 1] [--fraction 0.5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_predict_clients import wrk_command
from bench.bench_predict_servers import process_tree
from harness import ground_truth
from harness.scenario_models import model_path
from harness.serve_process import ADMIN_TOKEN, Serve, free_port

CLIENT_CORE = 1
EVENTS_PER_S = 20_000
LUA = Path(__file__).with_name("soak_client.lua")
ARMS = ("champion", "challenger")


def lua_script(widths: int, path: Path, rows: int = 64) -> None:
    """The client script with `rows` feature rows and a few segments written into it."""
    rng = np.random.default_rng(11)
    x = ground_truth.sample_features(rng, rows)[:, :widths]
    lua_rows = ", ".join("'" + json.dumps([round(float(v), 4) for v in r]) + "'" for r in x)
    segs = [
        json.dumps({"publisher_category": p, "device_type": d})
        for p in ground_truth.PUBLISHER_CATEGORIES[:3]
        for d in ground_truth.DEVICE_TYPES
    ]
    lua_segs = ", ".join(f"'{s}'" for s in segs)
    text = LUA.read_text().replace("ROWS_PLACEHOLDER", "{" + lua_rows + "}")
    path.write_text(text.replace("SEGMENTS_PLACEHOLDER", "{" + lua_segs + "}"))


def wrk(
    url: str,
    script: Path,
    *,
    seconds: float,
    connections: int,
    budget: int,
    delay_ms: int,
    click_rate: float,
    seed: int,
) -> dict[str, Any]:
    cmd = [
        *wrk_command(url, script, seconds, connections, CLIENT_CORE),
        "--",
        str(budget),
        str(delay_ms),
        str(click_rate),
        "20",
        str(seed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^SOAK-RESULT (\{.*\})$", out, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result: dict[str, Any] = json.loads(match.group(1))
    # With a budget, the rate is over the time it took to send it (to a second: wrk's Lua
    # has no finer clock); without one, over the whole run.
    spent = result["spent_s"] if budget and result["spent_s"] else result["duration_us"] / 1e6
    result["rate"] = result["sent_predict"] / max(spent, 1.0)
    return result


def server_counters(url: str) -> dict[str, int]:
    """Requests, impressions and clicks per arm, from /metrics (all model versions summed)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts = {f"{what}_{arm}": 0 for what in ("requests", "impressions", "clicks") for arm in ARMS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            arm = sample.labels.get("arm")
            if arm not in ARMS:
                continue
            if sample.name == "rampart_requests_total":
                counts[f"requests_{arm}"] += int(sample.value)
            elif sample.name == "rampart_events_total":
                kind = {"impression": "impressions", "click": "clicks"}[sample.labels["type"]]
                counts[f"{kind}_{arm}"] += int(sample.value)
    return counts


def footprint(root: int) -> dict[str, Any]:
    """RSS, PSS (MB) and open descriptors of every process in the server's tree."""
    procs: list[dict[str, Any]] = []
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        kb = {k: int(v) for k, v in re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.M)}
        procs.append(
            {"pid": pid, "rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024, "fds": fds}
            | {"cmd": cmdline[:80]}
        )
    return {
        "rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
        "pss_mb": round(sum(p["pss_mb"] for p in procs), 1),
        "fds": sum(p["fds"] for p in procs),
        "processes": procs,
    }


def _start(root: Path, workers: int) -> tuple[Serve, int]:
    """`rampart serve` on a fresh state with a rollout in force; and the champion's width."""
    from router.registry import Registry

    state = root / "state"
    registry = Registry(state)
    try:
        champion = registry.register(model_path("champion"))
        challenger = registry.register(model_path("challenger_better"))
    finally:
        registry.close()
    config = root / "soak.toml"
    # The exactly-once filter sized for the soak's events (~1.05 per /predict at up to
    # ~4,000 /predict a second here) with room to spare: its false-duplicate rate at a fifth
    # of the sized rate is far below one event in the run (README, "Events, exactly once").
    config.write_text(f"[serve]\nworkers = {workers}\nevents_per_s = {EVENTS_PER_S}\n")
    env = dict(
        os.environ,
        RAMPART_ADMIN_TOKEN=ADMIN_TOKEN,
        RAMPART_TOKEN_SECRET=secrets.token_hex(16),
        RAMPART_SLACK_WEBHOOK="",
    )
    serve = Serve(state, config, free_port(), env)
    serve.start()
    serve.wait_for_evaluator()
    serve.admin("start", {"version": str(challenger.version)})
    deadline = time.monotonic() + 60
    while serve.status().get("split_bp", 0) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the rollout's split never came into force")
        time.sleep(0.2)
    return serve, len(champion.features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rampart serve soak: load, events, a rollout")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured max rate")
    parser.add_argument("--click-rate", type=float, default=0.05)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="rampart-soak-") as tmp:
        root = Path(tmp)
        serve, width = _start(root, args.workers)
        try:
            return _soak(serve, width, root, args, out)
        finally:
            serve.stop()


def _soak(serve: Serve, width: int, root: Path, args: argparse.Namespace, out: Path) -> int:
    assert serve.proc is not None
    script = root / "soak.lua"
    lua_script(width, script)
    url = serve.url
    # The maximum: closed loop, no delay, no budget (its stragglers are outside the soak's
    # counter deltas, which start after it has drained).
    top = wrk(
        url,
        script,
        seconds=10,
        connections=16,
        budget=0,
        delay_ms=0,
        click_rate=args.click_rate,
        seed=1,
    )
    target = top["rate"] * args.fraction
    print(
        f"max /predict rate {top['rate']:.0f}/s (closed loop, 16 connections); "
        f"soak at {target:.0f}/s",
        flush=True,
    )
    # A connection's cycle is its delay plus the answer: size the connections for the target,
    # then correct once from a short run.
    delay_ms = 2
    connections = max(1, round(target * (delay_ms + 0.3) / 1000))
    probe = wrk(
        url,
        script,
        seconds=8,
        connections=connections,
        budget=round(target * 5),
        delay_ms=delay_ms,
        click_rate=args.click_rate,
        seed=2,
    )
    connections = max(1, round(connections * target / max(probe["rate"], 1.0)))
    time.sleep(1.0)

    before = server_counters(url)
    client: dict[str, int] = {}
    minutes = []
    for minute in range(max(1, round(args.minutes))):
        run = wrk(
            url,
            script,
            seconds=75,  # the budget is 60 s at the target: room for a slower client
            connections=connections,
            budget=round(target * 60),
            delay_ms=delay_ms,
            click_rate=args.click_rate,
            seed=10 + minute,
        )
        for k, v in run.items():
            if isinstance(v, int) and not k.endswith("_us"):
                client[k] = client.get(k, 0) + v
        mem = footprint(serve.proc.pid)
        status = serve.status()
        row = {
            "minute": minute + 1,
            "rate": round(run["rate"]),
            "p99_ms": run["p99_us"] / 1000,
            "p999_ms": run["p999_us"] / 1000,
            "failed": run["failed"] + run["socket_errors"] + run["non_2xx"],
            "rss_mb": mem["rss_mb"],
            "pss_mb": mem["pss_mb"],
            "fds": mem["fds"],
            "phase": status.get("phase"),
            "split_bp": status.get("split_bp"),
        }
        minutes.append(row)
        print(json.dumps(row), flush=True)
    after = server_counters(url)
    final = serve.status()
    server = {k: after[k] - before[k] for k in after}
    expected = {
        "requests_champion": client["champion_answers"],
        "requests_challenger": client["challenger_answers"],
        "impressions_champion": client["impressions_champion"],
        "impressions_challenger": client["impressions_challenger"],
        "clicks_champion": client["clicks_champion"],
        "clicks_challenger": client["clicks_challenger"],
    }
    warm = minutes[min(2, len(minutes) - 1)]
    report = {
        "minutes": len(minutes),
        "workers": args.workers,
        "max_rate": round(top["rate"]),
        "target_rate": round(target),
        "connections": connections,
        "per_minute": minutes,
        "client": client,
        "server_delta": server,
        "counters_equal": server == expected,
        "mismatch": {k: (expected[k], server[k]) for k in expected if expected[k] != server[k]},
        "errors": sum(m["failed"] for m in minutes) + client.get("events_rejected", 0),
        "unanswered": client["sent_predict"] - client["answered_predict"] - client["failed"],
        # The client sends no event twice: every duplicate the server reports is a false one.
        "false_duplicates": client.get("events_duplicates", 0),
        "rollout": final.get("rollout"),
        "last_rollout": final.get("last_rollout"),
        "rss_growth_after_warmup_mb": round(minutes[-1]["rss_mb"] - warm["rss_mb"], 1),
        "fd_growth_after_warmup": minutes[-1]["fds"] - warm["fds"],
        "rss_mb_median": statistics.median(m["rss_mb"] for m in minutes),
        "final_processes": footprint(serve.proc.pid)["processes"],
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if k not in ("per_minute", "final_processes")},
            indent=2,
        )
    )
    ok = report["counters_equal"] and report["errors"] == 0 and report["unanswered"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
