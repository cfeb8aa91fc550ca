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

    def _spawn(self) -> None:
        from guardrails import evaluator

        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(
            target=evaluator.run, args=(self.config,), name="rampart-evaluator", daemon=True
        )
        self.proc.start()

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            self._spawn()
            started = time.monotonic()
            assert self.proc is not None
            while self.proc.is_alive() and not self.stopping.is_set():
                self.proc.join(0.5)
            if self.stopping.is_set():
                return
            self.restarts += 1
            delay = 0.5 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            print(
                f"rampart: evaluator exited with {self.proc.exitcode}; restarting in {delay:g} s",
                file=sys.stderr,
            )
            self.stopping.wait(delay)

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
    while True:
        status = httpx.get(f"{url}/status", timeout=5).json()
        if as_json:
            print(json.dumps(status, indent=2))
        else:
            models = status["models"]
            print(
                f"phase {status['phase']}  split {status['split_bp'] / 100:.1f}%  "
                f"stale {status['stale']}"
            )
            for arm in ("champion", "challenger"):
                m = models.get(arm)
                counts = status["arms"][arm]
                label = m["label"] if m else "-"
                print(
                    f"  {arm:<10} {label:<24} requests {counts['requests']:>9}  "
                    f"errors {counts['errors']:>6}  impressions {counts['impressions']:>9}  "
                    f"clicks {counts['clicks']:>7}"
                )
        if not watch:
            return 0
        time.sleep(1)


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

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(_config(args), args.config)
            return 0
        if args.command == "demo":
            from rampart.demo import run_demo

            return run_demo(port=args.port, seconds=args.seconds)
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
    except (ConfigError, ValueError, KeyError) as e:
        print(f"rampart: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:
        print(f"rampart: cannot reach the server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
