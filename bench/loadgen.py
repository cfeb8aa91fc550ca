"""Open-loop HTTP/1.1 load generator, in the spirit of wrk2, for loopback targets only.

Requests go out on a schedule (open loop: latency from each request's intended send time,
so a server stall counts in every request scheduled during it) or as fast as answers come
(closed loop: a capacity measurement). Latencies go into an HDR histogram after the run, and
out as a JSON summary, an .hgrm file and a latency-by-percentile plot. This module is the
command line, and what other code imports (`run_load`, `LoadResult`, `plot_curves`, ...) is
importable from it; the parts live in

    bench.loadgen_http       the HTTP/1.1 client: raw asyncio connections, a run's state
    bench.loadgen_schedule   `run_load`: the open-loop schedule, the closed loop, draining
    bench.loadgen_report     `LoadResult`: HDR histogram, summary, .hgrm, curves and plots

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --rate 2000 --duration 10 \\
        --body-file req.msgpack --json out.json --hgrm out.hgrm --plot out.png

Errors:

    LoadgenError
     └── ProtocolError      the server answered something this client does not parse
    TargetNotAllowed        (a ValueError, from harness.target) the URL is not on loopback
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.loadgen_http import LoadgenError, ProtocolError, build_requests
from bench.loadgen_report import (
    Curve,
    LoadResult,
    hgrm_text,
    percentile_curve,
    plot_curves,
    read_curve,
)
from bench.loadgen_schedule import run_load
from harness.target import TargetNotAllowed, parse_url

__all__ = [
    "Curve",
    "LoadResult",
    "LoadgenError",
    "ProtocolError",
    "TargetNotAllowed",
    "build_requests",
    "hgrm_text",
    "main",
    "parse_url",
    "percentile_curve",
    "plot_curves",
    "read_bodies",
    "read_curve",
    "run_load",
]

_CONTENT_TYPES = {
    ".msgpack": "application/msgpack",
    ".mp": "application/msgpack",
    ".json": "application/json",
    ".jsonl": "application/json",
    ".ndjson": "application/json",
}


def read_bodies(path: Path) -> list[bytes]:
    """Bodies from a file: concatenated msgpack objects, one per line (.jsonl), else whole."""
    data = path.read_bytes()
    if path.suffix in (".msgpack", ".mp"):
        import msgpack

        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        bodies, at = [], 0
        for _ in unpacker:
            bodies.append(data[at : unpacker.tell()])
            at = unpacker.tell()
        return bodies
    if path.suffix in (".jsonl", ".ndjson"):
        return [line for line in data.splitlines() if line.strip()]
    return [data]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Open-loop (wrk2-style) or closed-loop HTTP/1.1 load on a loopback URL.",
    )
    p.add_argument("--url", help="http://127.0.0.1:PORT/PATH (loopback only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    mode.add_argument("--max-throughput", action="store_true", help="closed loop")
    p.add_argument("--duration", type=float, default=10.0, help="seconds, warmup included")
    p.add_argument("--count", type=int, help="stop after N requests (warmup included)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals (open loop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="POST")
    p.add_argument("--body-file", type=Path, nargs="+", action="extend", default=[])
    p.add_argument("--content-type", help="default: from the body files' extension")
    p.add_argument("--drain-timeout", type=float, default=5.0)
    p.add_argument("--max-lag-ms", type=float, default=1.0, help="kept_up if lag p99 <= this")
    p.add_argument("--label", help="this run's name in the plot legend")
    p.add_argument("--json", type=Path, help="write the summary here")
    p.add_argument("--hgrm", type=Path, help="write the percentile distribution here")
    p.add_argument("--plot", type=Path, help="write a latency-by-percentile PNG here")
    p.add_argument("--compare", type=Path, nargs="+", action="extend", default=[],
                   help=".hgrm/.json of other runs to overlay on --plot")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    curves = [read_curve(path) for path in args.compare]
    if args.url is None:
        if not (curves and args.plot):
            parser.error("give --url to run load, or --plot OUT with --compare FILES to plot")
        plot_curves(curves, args.plot)
        return 0
    if args.rate is None and not args.max_throughput:
        parser.error("give --rate R (open loop) or --max-throughput (closed loop)")
    try:
        host, port, path = parse_url(args.url)
    except ValueError as exc:
        print(f"bench.loadgen: {exc}", file=sys.stderr)
        return 2
    bodies = [body for f in args.body_file for body in read_bodies(f)] or [b""]
    content_type = args.content_type
    if content_type is None:
        kinds = {_CONTENT_TYPES.get(f.suffix, "application/octet-stream") for f in args.body_file}
        if len(kinds) > 1:
            parser.error(f"body files of several types {sorted(kinds)}: give --content-type")
        content_type = kinds.pop() if kinds else "application/octet-stream"

    import uvloop

    try:
        result = uvloop.run(
            run_load(
                host, port, path, bodies, content_type,
                rate=None if args.max_throughput else args.rate,
                duration_s=args.duration, count=args.count, connections=args.connections,
                warmup_s=args.warmup, poisson=args.poisson, seed=args.seed,
                method=args.method, drain_timeout_s=args.drain_timeout,
                max_lag_ms=args.max_lag_ms, label=args.label or args.url,
            )
        )  # fmt: skip
    except LoadgenError as exc:
        print(f"bench.loadgen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bench.loadgen: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    result.write(json_path=args.json, hgrm_path=args.hgrm)
    if args.plot:
        plot_curves([result.curve(), *curves], args.plot)
    shown = {k: v for k, v in result.summary.items() if k != "percentile_distribution"}
    print(json.dumps(shown, indent=2))
    if result.summary["kept_up"] is False:
        print("bench.loadgen: WARNING: the generator fell behind its schedule", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
