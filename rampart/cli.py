"""The `rampart` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rampart.status_table import status_text
from rampart.supervisor import serve
from router.config import Config, ConfigError
from router.registry import ModelRecord, Status
from router.shared_memory import StateDirFull

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
URL_HELP = "the server: http://host:port, or unix:/path/to.sock (its [serve] admin_listen)"


def _config(args: argparse.Namespace) -> Config:
    config = Config.load(getattr(args, "config", None))
    return config.with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        state_dir=getattr(args, "state_dir", None),
        fleet_url=getattr(args, "fleet", None),
        fleet_name=getattr(args, "fleet_name", None),
        host_id=getattr(args, "host_id", None),
        admin_listen=getattr(args, "admin_listen", None),
        registry_backend=getattr(args, "registry_backend", None),
        tracking_uri=getattr(args, "tracking_uri", None),
        model_name=getattr(args, "model_name", None),
    )


def _models(args: argparse.Namespace) -> int:
    """`models register|list`, on the local registry, MLflow's ([registry] backend), or with
    --fleet the fleet's. `register --start` queues the new version for a rollout (it starts
    at once when none runs); `--replace` takes the place of the queued ones."""
    start = getattr(args, "start", False)
    if getattr(args, "replace", False) and not start:
        raise ConfigError("--replace goes with --start")
    from guardrails.release_train import enqueue
    from router.registry import Registry

    config = _config(args)
    if config.registry.backend == "mlflow":  # a fleet's leader takes its models from MLflow
        return _mlflow_models(args, config)
    if args.fleet:
        return _fleet_models(args, start)
    registry = Registry(Path(args.state_dir))
    err = sys.stderr
    try:
        if args.models_command == "register":
            record = registry.register(Path(args.file))
            print(record.version)
            if start and record.status == Status.CHAMPION:
                print(f"model {record.version} is the champion: nothing to roll out", file=err)
            elif start:
                print(enqueue(registry, record.version, replace=args.replace), file=err)
            return 0
        _list(registry.all(), registry.queued())
        return 0
    finally:
        registry.close()


def _mlflow_models(args: argparse.Namespace, config: Config) -> int:
    from router.mlflow_registry import MlflowRegistry, client, status_of

    if args.models_command == "register":
        registry = MlflowRegistry(config.registry, config.state_path, sync=False)
        try:
            print(registry.register(Path(args.file), start=args.start, replace=args.replace))
        finally:
            registry.close()
        return 0
    # What MLflow says, without downloading anything.
    mlflow = client(config.registry.tracking_uri)
    name = config.registry.model_name
    aliases = mlflow.get_registered_model(name).aliases or {}
    champion = int(aliases.get("champion", 0) or 0)
    versions = sorted(
        mlflow.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version)
    )
    queued = sorted(
        (float(mv.tags.get("rampart.queued_at", "0") or 0), int(mv.version))
        for mv in versions
        if status_of(mv.tags, int(mv.version) == champion) == Status.QUEUED
    )
    order = {v: i + 1 for i, (_, v) in enumerate(queued)}
    for mv in versions:
        version = int(mv.version)
        status = status_of(mv.tags, version == champion).value
        here = [a for a, v in aliases.items() if int(v) == version]
        where = f"position {order[version]}" if version in order else ""
        reason = mv.tags.get("rampart.reason", "")
        label = f"{name}:{version}" + "".join(f" @{a}" for a in here)
        print(f"{version:>4}  {label:<28} {status:<10} {where:<11} {reason}".rstrip())
    return 0


def _list(records: list[ModelRecord], queued: list[ModelRecord]) -> None:
    order = {r.version: i + 1 for i, r in enumerate(queued)}
    for rec in records:
        where = f"position {order[rec.version]}" if rec.version in order else ""
        line = f"{rec.version:>4}  {rec.label:<28} {rec.status.value:<10} {where:<11} {rec.reason}"
        print(line.rstrip())


def _fleet_models(args: argparse.Namespace, start: bool) -> int:
    from guardrails.fleet_leader import FleetRegistry
    from guardrails.fleet_store import FleetStore, StoreUnavailable
    from guardrails.release_train import enqueue
    from router.models import Model

    try:
        with FleetStore(args.fleet, args.fleet_name, timeout_s=5.0) as store:
            registry = FleetRegistry(store, None)  # unfenced: registering and queueing only
            if args.models_command == "register":
                path = Path(args.file).resolve()
                model = Model(path)  # validates, as the local registry does
                record = {"name": model.name, "features": list(model.features)}
                stored = store.put_model(record, path.read_bytes())
                print(stored["version"])
                if start and stored["status"] == Status.CHAMPION.value:
                    print(f"model {stored['version']} is the champion: nothing to roll out",
                          file=sys.stderr)  # fmt: skip
                elif start:  # the fleet's leader starts it when no rollout runs
                    text = enqueue(registry, int(stored["version"]), replace=args.replace)
                    print(text, file=sys.stderr)
                return 0
            _list(registry.all(), registry.queued())
            return 0
    except StoreUnavailable as e:
        print(f"rampart: {e}", file=sys.stderr)
        return 1


def _client(url: str, timeout: float) -> httpx.Client:
    """A client for `--url`: http(s)://host:port, or unix:/path/to.sock for a server whose
    admin listens on a unix socket (`[serve] admin_listen`)."""
    import httpx  # the client commands only: `rampart serve` never loads it

    if url.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=url[len("unix:") :])
        return httpx.Client(transport=transport, base_url="http://rampart", timeout=timeout)
    return httpx.Client(base_url=url, timeout=timeout)


def _admin(url: str, path: str, payload: dict[str, Any] | None = None) -> int:
    token = os.environ.get("RAMPART_ADMIN_TOKEN", "")
    with _client(url, timeout=10) as client:
        r = client.post(path, json=payload or {}, headers={"Authorization": f"Bearer {token}"})
    print(json.dumps(r.json(), indent=2))
    return 0 if r.status_code == 200 else 1


def _status(url: str, as_json: bool, watch: bool) -> int:
    """Print GET /status once, or every second with --watch until Ctrl-C."""
    import httpx

    if watch:
        # Ctrl-C must end --watch even when the parent started it with SIGINT ignored or
        # blocked (a background job of a non-interactive shell, a process that spawned it
        # while blocking signals): both are inherited across exec.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tty = sys.stdout.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    try:
        while True:
            try:
                with _client(url, timeout=5) as client:
                    response = client.get("/status")
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

    journal: Any
    if args.fleet:
        from guardrails.fleet_leader import FleetLog
        from guardrails.fleet_store import FleetStore

        journal = FleetLog(FleetStore(args.fleet, args.fleet_name, timeout_s=5.0), None, None)
    else:
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


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry-backend", choices=["local", "mlflow"], help="[registry] backend")
    p.add_argument("--tracking-uri", help="[registry] tracking_uri (MLflow)")
    p.add_argument("--model-name", help="[registry] model_name (MLflow)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rampart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve /predict with the registry's models")
    p.add_argument("--config")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--state-dir")
    p.add_argument("--fleet", metavar="URL", help="fleet mode: redis://host:6379/0")
    p.add_argument("--fleet-name", help="the fleet's name in the store (default: default)")
    p.add_argument("--host-id", help="this host in the fleet (default: hostname:port)")
    p.add_argument(
        "--admin-listen",
        metavar="ADDRESS",
        help="serve /admin/... only here: host:port or unix:/path/to.sock ([serve] admin_listen)",
    )
    _registry_flags(p)

    p = sub.add_parser("demo", help="the whole story: a promotion and a rollback, live")
    p.add_argument("--rate", type=float, default=2000.0, help="simulated requests per second")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    p.add_argument(
        "--fleet",
        action="store_true",
        help="three rampart serve --fleet hosts on a private redis-server (needs redis-server)",
    )

    p = sub.add_parser("scenario", help="run a rollout scenario end to end and print its verdict")
    p.add_argument("name")
    p.add_argument("--json", dest="json_out", help="also write the verdict to this file")
    p.add_argument("--rate", type=float, default=2000.0, help="simulated requests per second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--registry-backend",
        choices=["local", "mlflow"],
        default="local",
        help="the models' registry: local, or a private MLflow store (sqlite; rampart[mlflow])",
    )

    p = sub.add_parser("models", help="the model registry")
    msub = p.add_subparsers(dest="models_command", required=True)
    r = msub.add_parser("register")
    r.add_argument("file")
    r.add_argument(
        "--start", action="store_true", help="roll it out: now, or queued behind the running one"
    )
    r.add_argument(
        "--replace", action="store_true", help="with --start: replace the queued candidates"
    )
    ls = msub.add_parser("list")
    for q in (r, ls):
        q.add_argument("--state-dir", default="state")
        q.add_argument("--config")
        q.add_argument("--fleet", metavar="URL", help="the fleet's registry: redis://host:6379/0")
        q.add_argument("--fleet-name", default="default")
        _registry_flags(q)

    p = sub.add_parser("rollout", help="control the rollout (admin)")
    p.add_argument("action", choices=["start", "pause", "resume", "rollback", "promote"])
    p.add_argument("version", nargs="?")
    p.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)

    p = sub.add_parser("status", help="the rollout's state")
    p.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true")

    p = sub.add_parser("report", help="a rollout's post-mortem, from the event log")
    p.add_argument("rollout_id", nargs="?", metavar="ROLLOUT_ID")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--state-dir", default="state")
    p.add_argument("--out", help="write here (Markdown plots go next to it) instead of stdout")
    p.add_argument("--list", action="store_true", help="list the rollouts instead")
    p.add_argument("--fleet", metavar="URL", help="a fleet rollout's log: redis://host:6379/0")
    p.add_argument("--fleet-name", default="default")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(_config(args), args.config)
        if args.command == "demo":
            from rampart.demo import run_demo

            return run_demo(rate=args.rate, port=args.port, fleet_hosts=3 if args.fleet else 0)
        if args.command == "scenario":
            from harness.session import run_scenario

            verdict = run_scenario(
                args.name, rate=args.rate, seed=args.seed, registry=args.registry_backend
            )
            text = json.dumps(verdict, indent=2)
            print(text)
            if args.json_out:
                Path(args.json_out).write_text(text + "\n")
            return 0 if verdict["passed"] else 1
        if args.command == "models":
            return _models(args)
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
    except StateDirFull as e:  # a full disk at start: one line, not a traceback
        print(f"rampart: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        httpx = sys.modules.get("httpx")  # loaded by the client commands; none, no such error
        if httpx is None or not isinstance(e, httpx.HTTPError):
            raise
        print(f"rampart: cannot reach the server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
