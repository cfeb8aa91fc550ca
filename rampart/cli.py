"""The `rampart` command line."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from guardrails.policy import Policy
from router.config import Config, ConfigError
from router.slab import SharedMemory

DEFAULT_URL = "http://127.0.0.1:8000"


def _config(args: argparse.Namespace) -> Config:
    config = Config.load(getattr(args, "config", None))
    return config.with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        state_dir=getattr(args, "state_dir", None),
    )


def serve(config: Config, config_path: str | None = None) -> None:
    import uvicorn

    from guardrails import evaluator

    Policy.from_config(config)  # a bad rollout config fails here, before anything starts
    evaluator.prepare(config).close()
    supervisor = _EvaluatorSupervisor(config)
    supervisor.start()
    # Workers are spawned processes: they re-read the same file plus the flags.
    os.environ["RAMPART_CONFIG"] = str(Path(config_path).resolve()) if config_path else ""
    os.environ["RAMPART_SERVE_OVERRIDES"] = json.dumps(
        {k: getattr(config.serve, k) for k in ("host", "port", "workers")}
        | {"state_dir": str(config.state_path)}
    )
    try:
        uvicorn.run(
            "router.app:create_app",
            factory=True,
            host=config.serve.host,
            port=config.serve.port,
            workers=config.serve.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        supervisor.stop()


class _EvaluatorSupervisor(threading.Thread):
    """Keeps the evaluator process running: restarted when it dies, with a growing
    delay when it keeps dying. While it is down the workers' stale-heartbeat check
    sends every request to the champion."""

    def __init__(self, config: Config) -> None:
        super().__init__(name="rampart-evaluator-supervisor", daemon=True)
        self.config = config
        self.stopping = threading.Event()
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.restarts = 0
        self.shm: SharedMemory | None = None

    STARTUP_GRACE_S = 20.0

    def _spawn(self) -> None:
        from guardrails import evaluator

        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(
            target=evaluator.run, args=(self.config,), name="rampart-evaluator", daemon=True
        )
        self.proc.start()
        cpu = self.config.serve.evaluator_cpu
        if cpu >= 0 and self.proc.pid is not None and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError as e:
                print(f"rampart: cannot pin the evaluator to CPU {cpu}: {e}", file=sys.stderr)

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            self._spawn()
            started = time.monotonic()
            assert self.proc is not None
            while self.proc.is_alive() and not self.stopping.is_set():
                self.proc.join(0.5)
                if self._hung(started):
                    print("rampart: evaluator heartbeat stopped; replacing it", file=sys.stderr)
                    self.proc.kill()
            if self.stopping.is_set():
                return
            self.restarts += 1
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            print(
                f"rampart: evaluator exited with {self.proc.exitcode}; restarting in {delay:g} s",
                file=sys.stderr,
            )
            self.stopping.wait(delay)

    def _hung(self, started: float) -> bool:
        """Alive but silent: no heartbeat for twice the workers' stale timeout (after a
        start-up grace period, since the first start compiles the numba kernels)."""
        from router.slab import SharedMemory

        if time.monotonic() - started < self.STARTUP_GRACE_S:
            return False
        if self.shm is None:
            self.shm = SharedMemory.attach(self.config.state_path)
        age = time.time() - self.shm.heartbeat_ns() / 1e9
        return age > 2 * self.config.serve.stale_after_s

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _admin(url: str, path: str, payload: dict[str, Any] | None = None) -> int:
    token = os.environ.get("RAMPART_ADMIN_TOKEN", "")
    r = httpx.post(
        f"{url}{path}", json=payload or {}, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    print(json.dumps(r.json(), indent=2))
    return 0 if r.status_code == 200 else 1


_STATE_COLOURS = {"pass": "32", "fail": "31;1", "waiting": "33"}
_SPANS = ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s"))


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    for size, unit, sub, sub_unit in _SPANS:
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub:02d}{sub_unit}"
    return f"{s}s"


def _columns(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)


def _status_text(s: dict[str, Any], colour: bool) -> str:
    """The top of the dashboard as a compact table: rollout, guardrails, next step, arms."""

    def paint(text: str, code: str | None) -> str:
        return f"\033[{code}m{text}\033[0m" if colour and code else text

    models = s.get("models") or {}
    label = {arm: (models.get(arm) or {}).get("label", "-") for arm in ("champion", "challenger")}
    r, last = s.get("rollout"), s.get("last_rollout")
    if r:
        lines = [f"rollout {r['id']}: {label['challenger']} vs {label['champion']}"]
    elif last:
        lines = [f"no rollout; last {last['id']} {last['outcome'] or last['state']}"]
        lines[0] += f": {last['reason']}" if last.get("reason") else ""
    else:
        lines = [f"no rollout; champion {label['champion']}"]
    head = [f"phase {s['phase']}/{len(s.get('phases') or ()) or 5}", str(s.get("state", "?"))]
    head.append(f"split {s['split_bp'] / 100:.1f}%")
    if r:
        head.append(
            f"in phase {_span(r.get('time_in_phase_s'))} "
            f"(min {_span(r.get('phase_min_s'))}, max {_span(r.get('phase_max_s'))})"
        )
    lines.append("  ".join(head))
    if s.get("stale"):
        warning = "STALE: evaluator heartbeat lost, 100% of traffic to the champion"
        lines.append(paint(warning, "31;1"))
    guardrails = s.get("guardrails") or []
    if guardrails:
        rows = [["GUARDRAIL", "VALUE", "THRESHOLD", "STATE"]]
        for g in guardrails:
            rows.append([g["name"], _value(g.get("value")), str(g.get("threshold")), g["state"]])
        table = _columns(rows, right=(1,))
        lines += ["", table[0]]
        for row, g in zip(table[1:], guardrails, strict=True):
            # The state is the last column: painted after padding, so alignment holds.
            state = g["state"]
            lines.append(row[: -len(state)] + paint(state, _STATE_COLOURS.get(state)))
    if s.get("next"):
        lines += ["", f"next: {s['next']}"]
    rows = [["ARM", "MODEL", "REQUESTS", "ERRORS", "IMPRESSIONS", "CLICKS", "CTR"]]
    for arm in ("champion", "challenger"):
        a = (s.get("arms") or {}).get(arm) or {}
        counts = [int(a.get(k, 0)) for k in ("requests", "errors", "impressions", "clicks")]
        ctr = f"{counts[3] / counts[2]:.3%}" if counts[2] else "-"
        rows.append([arm, label[arm], *map(str, counts), ctr])
    lines += ["", *_columns(rows, right=(2, 3, 4, 5, 6))]
    return "\n".join(lines)


def _status(url: str, as_json: bool, watch: bool) -> int:
    """Print GET /status once, or every second with --watch until Ctrl-C."""
    tty = sys.stdout.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    try:
        while True:
            try:
                response = httpx.get(f"{url}/status", timeout=5)
                response.raise_for_status()
                status = response.json()
            except (httpx.HTTPError, ValueError) as e:
                print(f"rampart: cannot read {url}/status: {e}", file=sys.stderr)
                if not watch:
                    return 1
                time.sleep(1)
                continue
            text = json.dumps(status, indent=2) if as_json else _status_text(status, colour)
            if watch and tty:
                text = "\033[H\033[2J" + time.strftime("%H:%M:%S  ") + f"{url}\n\n" + text
            print(text, flush=True)
            if not watch:
                return 0
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def _report(args: argparse.Namespace) -> int:
    from guardrails import report
    from guardrails.journal import Journal

    state = Path(args.state_dir)
    if not (state / "rollouts.db").is_file():
        print(f"rampart: no rollout journal in {state} (see --state-dir)", file=sys.stderr)
        return 2
    journal = Journal(state)
    out = Path(args.out) if args.out else None
    try:
        if args.list:
            print(report.listing(journal))
            return 0
        text = report.render(journal, args.rollout_id, args.format, out)
    except KeyError as e:
        print(f"rampart: {e.args[0]}", file=sys.stderr)
        return 2
    finally:
        journal.close()
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"rampart: wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rampart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve /predict with the registry's models")
    p.add_argument("--config")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--state-dir")

    p = sub.add_parser("demo", help="serve the demo models and send them traffic")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seconds", type=float, default=10.0)

    p = sub.add_parser("scenario", help="run a rollout scenario end to end and print its verdict")
    p.add_argument("name")
    p.add_argument("--json", dest="json_out", help="also write the verdict to this file")
    p.add_argument("--rate", type=float, default=1000.0, help="simulated requests per second")
    p.add_argument("--seed", type=int, default=1)

    p = sub.add_parser("models", help="the model registry")
    msub = p.add_subparsers(dest="models_command", required=True)
    r = msub.add_parser("register")
    r.add_argument("file")
    r.add_argument("--state-dir", default="state")
    ls = msub.add_parser("list")
    ls.add_argument("--state-dir", default="state")

    p = sub.add_parser("rollout", help="control the rollout (admin)")
    p.add_argument("action", choices=["start", "pause", "resume", "rollback", "promote"])
    p.add_argument("version", nargs="?")
    p.add_argument("--url", default=DEFAULT_URL)

    p = sub.add_parser("status", help="the rollout's state")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true")

    p = sub.add_parser("report", help="a rollout's post-mortem, from the event log")
    p.add_argument("rollout_id", nargs="?", metavar="ROLLOUT_ID")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--state-dir", default="state")
    p.add_argument("--out", help="write here (Markdown plots go next to it) instead of stdout")
    p.add_argument("--list", action="store_true", help="list the rollouts instead")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(_config(args), args.config)
            return 0
        if args.command == "demo":
            from rampart.demo import run_demo

            return run_demo(port=args.port, seconds=args.seconds)
        if args.command == "scenario":
            from bench.scenarios import run_scenario

            verdict = run_scenario(args.name, rate=args.rate, seed=args.seed)
            text = json.dumps(verdict, indent=2)
            print(text)
            if args.json_out:
                Path(args.json_out).write_text(text + "\n")
            return 0 if verdict["passed"] else 1
        if args.command == "models":
            from router.registry import Registry

            registry = Registry(Path(args.state_dir))
            if args.models_command == "register":
                record = registry.register(Path(args.file))
                print(record.version)
                return 0
            for rec in registry.all():
                print(f"{rec.version:>4}  {rec.label:<28} {rec.status.value:<10} {rec.reason}")
            return 0
        if args.command == "rollout":
            if args.action == "start" and not args.version:
                parser.error("rollout start needs a VERSION")
            payload = {"version": args.version} if args.action == "start" else {}
            return _admin(args.url, f"/admin/rollout/{args.action}", payload)
        if args.command == "status":
            return _status(args.url, args.json, args.watch)
        if args.command == "report":
            if not (args.list or args.rollout_id):
                parser.error("report needs a ROLLOUT_ID (or --list)")
            return _report(args)
    except (ConfigError, ValueError, KeyError) as e:
        print(f"rampart: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:
        print(f"rampart: cannot reach the server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
