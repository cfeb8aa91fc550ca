"""The `rampart` command line."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from guardrails.policy import Policy
from rampart.status_table import status_text
from router.config import Config, ConfigError, check_secrets
from router.control import ControlBlock
from router.shared_memory import SharedMemory

DEFAULT_URL = "http://127.0.0.1:8000"


def _config(args: argparse.Namespace) -> Config:
    config = Config.load(getattr(args, "config", None))
    return config.with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        state_dir=getattr(args, "state_dir", None),
    )


def check(config: Config) -> None:
    """Every section and secret, checked before any worker or evaluator starts: a mistake
    is one line naming the key (ConfigError), exit 2."""
    from guardrails.alerts import AlertsConfig

    Policy.from_config(config)
    AlertsConfig.from_section(config.raw.get("alerts", {})).with_env().check()
    check_secrets(fleet=config.fleet.enabled)


def serve(config: Config, config_path: str | None = None) -> int:
    import uvicorn

    from guardrails import evaluator

    check(config)
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
    if supervisor.gave_up:
        print(f"rampart: {supervisor.gave_up}", file=sys.stderr)
        return 1
    return 0


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
        self.control: ControlBlock | None = None
        self.spawned_at = 0.0
        self.gave_up = ""  # why it stopped restarting, if it did

    STARTUP_GRACE_S = 300.0
    # An evaluator that dies before its first heartbeat this many times in a row, the same
    # way each time, will not start: say why and stop instead of restarting it forever.
    MAX_START_FAILURES = 3

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
        failures: list[str] = []
        while not self.stopping.is_set():
            self._spawn()
            started, self.spawned_at = time.monotonic(), time.time()
            assert self.proc is not None
            while self.proc.is_alive() and not self.stopping.is_set():
                self.proc.join(0.5)
                if self._hung(started):
                    print("rampart: evaluator heartbeat stopped; replacing it", file=sys.stderr)
                    self.proc.kill()
            if self.stopping.is_set():
                return
            why = self._start_error()
            failures = [*failures, why] if why else []
            if len(failures) >= self.MAX_START_FAILURES and len(set(failures)) == 1:
                self.gave_up = (
                    f"the evaluator failed {len(failures)} times at start: {why}; stopping"
                )
                print(f"rampart: {self.gave_up}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts the workers down
                return
            self.restarts += 1
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            print(
                f"rampart: evaluator exited with {self.proc.exitcode}; restarting in {delay:g} s",
                file=sys.stderr,
            )
            self.stopping.wait(delay)

    def _start_error(self) -> str:
        """The one line a failed evaluator start left, if it died before its first tick."""
        from guardrails.evaluator import START_ERROR_FILE

        path = self.config.state_path / START_ERROR_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _hung(self, started: float) -> bool:
        """Alive but silent: no heartbeat for twice the workers' stale timeout. Before its
        first heartbeat an evaluator gets STARTUP_GRACE_S: the first start on a machine
        compiles the numba kernels, which can take a minute."""
        if self.control is None:
            self.control = ControlBlock(SharedMemory.attach(self.config.state_path))
        beat = self.control.heartbeat_ns() / 1e9
        if beat < self.spawned_at:
            return time.monotonic() - started > self.STARTUP_GRACE_S
        age = time.time() - beat
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
            text = json.dumps(status, indent=2) if as_json else status_text(status, colour)
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
    from guardrails.rollouts import Journal

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

    p = sub.add_parser("demo", help="the whole story: a promotion and a rollback, live")
    p.add_argument("--rate", type=float, default=2000.0, help="simulated requests per second")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")

    p = sub.add_parser("scenario", help="run a rollout scenario end to end and print its verdict")
    p.add_argument("name")
    p.add_argument("--json", dest="json_out", help="also write the verdict to this file")
    p.add_argument("--rate", type=float, default=2000.0, help="simulated requests per second")
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
            return serve(_config(args), args.config)
        if args.command == "demo":
            from rampart.demo import run_demo

            return run_demo(rate=args.rate, port=args.port)
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
