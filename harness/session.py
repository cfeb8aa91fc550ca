"""One `rampart serve` with the shipped champion, the simulator driving it, and rollouts on it.

`Session` starts the server (pinned to core 0 when there are two), the simulator on its own
thread (core 1) and a local Slack webhook; `Session.rollout` rolls out one scenario's
challenger and returns the verdict when the rollout ends; `Session.train` queues several and
lets the evaluator start them one after another. `run_scenario` is one scenario on a
fresh session: `rampart scenario NAME`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

from harness import simulator
from harness.disturb import disturb
from harness.ledger import Ledger
from harness.mlflow_store import MlflowStore
from harness.redis_process import private_redis
from harness.scenario_models import model_path
from harness.scenarios import SCENARIO_NAMES, SCENARIOS, TRAIN, Scenario, server_config
from harness.serve_process import ADMIN_TOKEN, Serve, free_port, pin
from harness.simulator_stats import SimStats
from harness.slack_sink import slack_sink
from harness.verdict import traffic_summary, verdict

Status = dict[str, Any]


class Traffic:
    """The simulator on its own thread and event loop, until stopped."""

    def __init__(self, config: simulator.SimConfig) -> None:
        self.config = config
        self.stats: SimStats | None = None  # once stopped
        self.live: SimStats | None = None  # from the first tick on, filled as it runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._running = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.stats = await simulator.simulate(self.config, self._stop, self._tick)

        try:
            uvloop.run(main())
        except BaseException as e:  # reported by start() or stop()
            self.error = e
        finally:
            self._running.set()

    def _tick(self, stats: SimStats) -> None:
        self.live = stats
        self._running.set()

    def start(self, timeout_s: float = 30.0) -> SimStats:
        """Start the simulator; returns its live stats once it is sending."""
        self._thread.start()
        self._running.wait(timeout_s)
        if self.live is None:
            raise RuntimeError(f"the simulator did not start: {self.error!r}") from self.error
        return self.live

    def settle(self, timeout_s: float = 10.0) -> SimStats:
        """Until every request sent so far has come back and an answer that arrived after
        the last of them is in the timeline: what the server did until now is all there."""
        stats = self.live
        assert stats is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        sent = stats.sent
        while stats.returned < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        after = math.ceil((time.time() - stats.started_at) / stats.timeline_s)
        while time.monotonic() < deadline:
            if len(stats.buckets) > after and any(stats.buckets[after]):
                break
            time.sleep(0.02)
        return stats

    def stop(self) -> SimStats | None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between: already done
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self.error is not None:
            raise RuntimeError(f"the simulator failed: {self.error!r}") from self.error
        return self.stats


class Session:
    """One `rampart serve` with the shipped champion, the simulator driving it, and a local
    Slack webhook; rollouts run one after another on it (`rollout`)."""

    def __init__(
        self,
        *,
        rate: float = 2000.0,
        seed: int = 1,
        port: int = 0,
        on_status: Callable[[Status], None] | None = None,
        keep_state: Path | None = None,
        prefix: str = "sim-",
        max_s: float = 900.0,
        challenger_delay_ms: float = 0.0,
        fleet_hosts: int = 0,
        registry: str = "local",
    ) -> None:
        """`fleet_hosts` > 0: that many `rampart serve --fleet` hosts on a private Redis, the
        simulator sending to all of them; admin commands and `/status` go to the first.
        `registry` "mlflow": the models live in a private MLflow store (harness.mlflow_store)."""
        self.rate, self.seed, self.port, self.prefix = rate, seed, port, prefix
        self.fleet_hosts = fleet_hosts
        self.fleet_url = ""
        self.registry = registry
        self.mlflow: MlflowStore | None = None
        self.on_status = on_status
        self.keep_state = keep_state
        self.max_s = max_s
        self.challenger_delay_ms = challenger_delay_ms
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Session:
        if pin(1) and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1})  # the ad server (simulator) and the workers apart
        stack = self.stack.__enter__()
        try:
            self._enter(stack)
        except BaseException:
            stack.close()  # whatever started is stopped: __exit__ will not run
            raise
        return self

    def _enter(self, stack: contextlib.ExitStack) -> None:
        root = self.keep_state or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rampart-"))
        )
        self.root = root
        self.state = root / "state"
        if self.fleet_hosts:
            self.fleet_url = stack.enter_context(private_redis())
        if self.registry == "mlflow":
            self.mlflow = MlflowStore(root / "mlflow")
        self.register("champion")
        slack_url, self.alerts = stack.enter_context(slack_sink())
        self.env = dict(
            os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN, RAMPART_SLACK_WEBHOOK=slack_url
        )
        if self.fleet_hosts:
            self.env["RAMPART_TOKEN_SECRET"] = secrets.token_hex(16)  # one secret for the fleet
        self.ports = [self.port or free_port(), *(free_port() for _ in range(self.fleet_hosts - 1))]
        self._make_hosts("")
        self._write_configs()
        self._start_serve()
        sim = simulator.SimConfig(
            self.serve.url,
            self.rate,
            self.max_s,
            seed=self.seed,
            timeline_s=0.1,
            request_prefix=self.prefix,
            also=tuple(h.url for h in self.hosts[1:]),
        )
        self.traffic = Traffic(sim)
        stack.callback(self.traffic.stop)
        self.traffic.start()

    def _make_hosts(self, suffix: str) -> None:
        self.hosts = []
        for i, port in enumerate(self.ports):
            config = self.root / f"scenario-{i}.toml"
            state = self.state if i == 0 else self.root / f"state-{i}{suffix}"
            self.hosts.append(Serve(state, config, port, self.env))
            self.stack.callback(self.hosts[-1].stop)
        self.serve = self.hosts[0]

    def switch_registry(self, registry: str) -> None:
        """Restart the server on another registry ("local" or "mlflow"), with the champion
        registered there and a fresh state directory (a server that switches backends must
        not reuse its local registry); the simulator goes on sending to the same ports."""
        if registry == self.registry:
            return
        self._stop_serve()
        self.registry = registry
        self.mlflow = MlflowStore(self.root / "mlflow") if registry == "mlflow" else None
        self.state = self.root / f"state-{registry}"
        self.register("champion")
        self._make_hosts(f"-{registry}")
        self._write_configs()
        self._start_serve()

    def _write_configs(self) -> None:
        for i, host in enumerate(self.hosts):
            text = server_config(self.challenger_delay_ms)
            if self.mlflow is not None:
                text += self.mlflow.config()
            if self.fleet_hosts:
                text += f'\n[fleet]\nurl = "{self.fleet_url}"\nhost_id = "host-{i + 1}"\n'
            host.config.write_text(text)

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(None, None, None)

    def _start_serve(self) -> None:
        for host in self.hosts:
            host.start()
            host.warm_up()
        for host in self.hosts:
            host.wait_for_evaluator()

    def _stop_serve(self) -> None:
        for host in self.hosts:
            host.stop()

    def register(self, variant: str, *, start: bool = False) -> int:
        """Register a shipped model variant; `start`: queue it, as `models register --start`."""
        if self.mlflow is not None:
            return self.mlflow.register(model_path(variant), start=start)
        if self.fleet_url:
            return register_in_fleet(self.fleet_url, model_path(variant))
        from router.registry import Registry

        registry = Registry(self.state)
        try:
            version = registry.register(model_path(variant)).version
            if start:
                registry.queue(version)
            return version
        finally:
            registry.close()

    def inject_faults(self, challenger_delay_ms: float) -> None:
        """Restart the server with this `[faults]` config, unless it already runs with it."""
        if challenger_delay_ms == self.challenger_delay_ms:
            return
        self.challenger_delay_ms = challenger_delay_ms
        self._write_configs()
        self._stop_serve()
        self._start_serve()

    def rollout(self, s: Scenario, timeout_s: float = 420.0) -> dict[str, Any]:
        """Roll out the scenario's challenger and return the verdict when the rollout ends."""
        self.inject_faults(s.challenger_delay_ms)
        began = time.monotonic()
        version = self.register(s.challenger)
        started_wall = time.time()
        rollout_id = self.serve.admin("start", {"version": str(version)})["rollout"]
        watch = Watch(self.serve, self.on_status)
        extra = disturb(s, self.serve, watch, self.traffic) if s.disturb else {}

        def ended(st: Status) -> bool:
            return not st.get("rollout") and (st.get("last_rollout") or {}).get("id") == rollout_id

        final = watch.until(ended, began + timeout_s)
        stats = self.traffic.settle()  # answers in flight at the flip reach the timeline
        alert = self._alert_for(rollout_id)
        seconds = time.monotonic() - began
        return verdict(s, final, watch.phases, stats, alert, extra, seconds, started_wall)

    def train(self, legs: tuple[Scenario, ...], timeout_s: float = 420.0) -> dict[str, Any]:
        """The release train: every leg's challenger registered and queued at once (as
        `models register --start`), started by the evaluator one after another, never by an
        admin command. One verdict per leg, and each version's status in the registry.
        Each leg is followed in the server's journal (harness.ledger), not by sampling
        `/status`: a leg pulled within a second must not be missed."""
        from router.registry import Registry

        deadline = time.monotonic() + timeout_s
        versions = [self.register(s.challenger, start=True) for s in legs]
        ledger = Ledger(self.state)
        verdicts = []
        try:
            for s, version in zip(legs, versions, strict=True):
                leg_began = time.monotonic()
                r = ledger.until(version, lambda r: not r.state.active, deadline, self._show)
                # Judged at once: the next leg's challenger answers must not reach this
                # timeline (the next leg starts on the tick after this one ends).
                stats = self.traffic.settle()
                alert = self._alert_for(r.id)
                seconds = time.monotonic() - leg_began
                final, phases = ledger.final(r), ledger.phases(r)
                verdicts.append(verdict(s, final, phases, stats, alert, {}, seconds, r.started))
        finally:
            ledger.close()
        registry = Registry(self.state)
        try:
            statuses = {str(v): registry.get(v).status.value for v in versions}
        finally:
            registry.close()
        passed = all(v["passed"] for v in verdicts)
        result = {"scenario": "train", "passed": passed, "legs": verdicts, "registry": statuses}
        if self.mlflow is not None:  # the outcomes as MLflow holds them
            result["mlflow"] = self.mlflow.outcomes(versions)
        return result

    def _show(self) -> None:
        """The live `/status` to `on_status` (progress display), if anyone watches."""
        if self.on_status is not None:
            with contextlib.suppress(httpx.HTTPError):
                self.on_status(self.serve.status())

    def _alert_for(self, rollout_id: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The webhook's last payload naming `rollout_id`: delivery runs on its own thread,
        after the flip, so it may come a little later."""
        deadline = time.monotonic() + timeout_s
        while True:
            mine = [a for a in self.alerts if rollout_id in json.dumps(a)]
            if mine or time.monotonic() >= deadline:
                return mine[-1] if mine else None
            time.sleep(0.1)


def register_in_fleet(url: str, path: Path) -> int:
    """`rampart models register FILE --fleet URL`: validated as the local registry does."""
    from guardrails.fleet_store import FleetStore
    from router.models import Model

    model = Model(path)
    with FleetStore(url, "default", timeout_s=5.0) as store:
        record = {"name": model.name, "features": list(model.features)}
        return int(store.put_model(record, path.read_bytes())["version"])


def run_scenario(
    name: str,
    *,
    rate: float = 2000.0,
    seed: int = 1,
    timeout_s: float = 420.0,
    on_status: Callable[[Status], None] | None = None,
    keep_state: Path | None = None,
    registry: str = "local",
) -> dict[str, Any]:
    """Run one scenario on a fresh server and return its verdict (see harness.scenarios);
    `registry` "mlflow": its models in a private MLflow store (harness.mlflow_store)."""
    if name not in SCENARIO_NAMES:
        raise ValueError(f"unknown scenario {name!r}; scenarios: {', '.join(SCENARIO_NAMES)}")
    if name == "train":
        with Session(
            rate=rate,
            seed=seed,
            on_status=on_status,
            keep_state=keep_state,
            prefix="train-",
            max_s=2 * timeout_s + 60,
            registry=registry,
        ) as session:
            return session.train(tuple(SCENARIOS[n] for n in TRAIN), 2 * timeout_s)
    scenario = SCENARIOS[name]
    session = Session(
        rate=rate,
        seed=seed,
        on_status=on_status,
        keep_state=keep_state,
        prefix=f"{name}-",
        max_s=timeout_s + 60,
        challenger_delay_ms=scenario.challenger_delay_ms,
        registry=registry,
    )
    with session:
        result = session.rollout(scenario, timeout_s)
        stats = session.traffic.stop()
    if stats is not None:
        result["traffic"] = traffic_summary(stats)
    return result


class Watch:
    """Polls `/status` until a condition holds, noting when each phase was entered."""

    def __init__(self, serve: Serve, on_status: Callable[[Status], None] | None) -> None:
        self.serve = serve
        self.on_status = on_status
        self.phases: list[tuple[int, float]] = []
        self.t0 = time.monotonic()

    def until(
        self, done: Callable[[Status], bool], deadline: float, *, any_state: bool = False
    ) -> Status:
        status: Status = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status = self.serve.status()
                phase = int(status.get("phase", 0))
                if phase and (not self.phases or self.phases[-1][0] != phase):
                    self.phases.append((phase, round(time.monotonic() - self.t0, 2)))
                if self.on_status:
                    self.on_status(status)
                loading = status.get("state") in (None, "loading") and not any_state
                if not loading and done(status):
                    return status
            time.sleep(0.25)
        raise TimeoutError(
            "the rollout did not finish in time; last status: "
            f"phase {status.get('phase')}, next: {status.get('next')}"
        )
