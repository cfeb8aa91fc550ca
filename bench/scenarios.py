"""Rollout scenarios, end to end: a real `rampart serve`, the ad-server simulator, a verdict.

Each scenario registers the shipped champion and one challenger variant in a fresh state
directory, starts `rampart serve` with the scenario config (production guardrail logic;
only durations and sample minimums scaled), drives it with the simulator, starts the
rollout and watches `/status` until the rollout ends. The verdict says what happened
(`outcome`, `phase`, `guardrail`), how long detection took as the client saw it
(`detection_seconds`: from the challenger's first answer to the moment every answer
comes from the champion), and whether that is what the scenario expects.

    rampart scenario broken-constant --json verdict.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench import simulator, world
from bench.scenario_models import demo_model_path
from bench.simstats import SimStats

ADMIN_TOKEN = "rampart-scenario"


@dataclass(frozen=True)
class Scenario:
    name: str
    challenger: str  # model variant (bench/scenario_models.py)
    outcome: str  # expected: promoted, rolled_back, stopped
    phase: int
    guardrails: tuple[str, ...]  # any of these may be the one named
    disturb: str = ""  # "freeze-evaluator" or "restart-serve"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("promote", "challenger_better", "promoted", 5, ("",)),
        Scenario("broken-constant", "broken_constant", "rolled_back", 1, ("prediction_spread",)),
        Scenario("broken-nan", "broken_nan", "rolled_back", 1, ("predictions_in_range",)),
        Scenario("broken-raise", "broken_raise", "rolled_back", 1, ("error_rate",)),
        Scenario("slow", "slow", "rolled_back", 1, ("latency_p99",)),
        Scenario(
            "miscalibrated",
            "miscalibrated",
            "rolled_back",
            2,
            ("calibration", "calibration_buckets"),
        ),
        Scenario("worse", "worse", "rolled_back", 3, ("ab_worse",)),
        Scenario(
            "segment-regression", "segment_regression", "stopped", 4, ("segment_degradation",)
        ),
        Scenario(
            "evaluator-crash",
            "challenger_better",
            "rolled_back",
            1,
            ("evaluator_heartbeat",),
            disturb="freeze-evaluator",
        ),
        Scenario(
            "restart",
            "miscalibrated",
            "rolled_back",
            2,
            ("calibration", "calibration_buckets"),
            disturb="restart-serve",
        ),
    )
}

# One config for every scenario and the demo. time_scale 1/7200: an hour of the policy is
# half a second, so the 12-day promotion takes 144 s. Evidence minimums are lowered to what
# ~2000 requests/s give in those seconds, and calibration buckets are 5% wide instead of 1%
# (a few hundred clicks cannot fill 1%-wide ones); the thresholds themselves are the defaults.
SCENARIO_CONFIG = """
[serve]
workers = 1
stale_after_s = 3.0
evaluator_cpu = {evaluator_cpu}

[segments]
publisher_category = {publishers}
device_type = {devices}
country_tier = {tiers}
creative_type = {creatives}

[calibration]
bucket_width = 0.05

[rollout]
time_scale = 0.000138889
sample_scale = 0.03
window_s = 10.0
journal_every_s = 1.0

[guardrails]
min_requests = 100
min_latency_samples = 100
min_ctr_impressions = 300
min_predictions = 300
min_srm_requests = 500
min_calibration_clicks = 60
min_bucket_clicks = 15
min_segment_clicks = 120
confidence = 0.99
"""


def scenario_config() -> str:
    def toml_list(values: tuple[str, ...]) -> str:
        return json.dumps([v for v in values if v != "other"])

    return SCENARIO_CONFIG.format(
        evaluator_cpu=1 if _pin(0) else -1,
        publishers=toml_list(world.PUBLISHER_CATEGORIES),
        devices=toml_list(world.DEVICE_TYPES),
        tiers=toml_list(world.COUNTRY_TIERS),
        creatives=toml_list(world.CREATIVE_TYPES),
    )


class _SlackSink(BaseHTTPRequestHandler):
    """A local Slack incoming webhook: the alerts land here for real, over HTTP."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with contextlib.suppress(ValueError):
            self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def slack_sink() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlackSink)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slack", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def _pin(cpu: int) -> list[str]:
    """`taskset -c cpu` when the machine has a core to spare, else nothing."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


class Serve:
    """`rampart serve` as a child process in its own session (so it can be stopped whole)."""

    def __init__(self, state: Path, config: Path, port: int, env: dict[str, str]) -> None:
        self.cmd = [
            *_pin(0),
            sys.executable,
            "-m",
            "rampart.cli",
            "serve",
            "--state-dir",
            str(state),
            "--config",
            str(config),
            "--port",
            str(port),
        ]
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rampart serve exited with code {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("rampart serve did not become ready")

    def wait_for_evaluator(self, timeout_s: float = 300.0) -> None:
        """Until the evaluator's heartbeat is fresh: its first start on a machine compiles
        the numba kernels (a minute or so), and admin commands wait for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status = self.status()
                if status.get("evaluator") and not status.get("stale"):
                    return
            time.sleep(0.25)
        raise RuntimeError("the evaluator did not start")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/status", timeout=5).json())

    def admin(self, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/admin/rollout/{action}",
            json=payload or {},
            timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"{action} refused: {r.status_code} {r.text}")
        return dict(r.json())


class Traffic:
    """The simulator on its own thread and event loop, until stopped."""

    def __init__(self, config: simulator.SimConfig) -> None:
        self.config = config
        self.stats: SimStats | None = None
        self.live: SimStats | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            self.stats = await simulator.simulate(self.config, self._stop, self._tick)

        try:
            asyncio.run(main())
        except BaseException as e:  # reported by stop()
            self.error = e

    def _tick(self, stats: SimStats) -> None:
        self.live = stats

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

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
        on_status: Callable[[dict[str, Any]], None] | None = None,
        keep_state: Path | None = None,
        prefix: str = "sim-",
        max_s: float = 900.0,
    ) -> None:
        self.rate, self.seed, self.port, self.prefix = rate, seed, port, prefix
        self.on_status = on_status
        self.keep_state = keep_state
        self.max_s = max_s
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Session:
        if _pin(1) and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1})  # the ad server (simulator) and the workers apart
        stack = self.stack.__enter__()
        root = self.keep_state or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rampart-"))
        )
        self.state = root / "state"
        self.register("champion")
        config = root / "scenario.toml"
        config.write_text(scenario_config())
        slack_url, self.alerts = stack.enter_context(slack_sink())
        env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN, RAMPART_SLACK_WEBHOOK=slack_url)
        self.serve = Serve(self.state, config, self.port or _free_port(), env)
        stack.callback(self.serve.stop)
        self.serve.start()
        _warm_up(self.serve.url)
        self.serve.wait_for_evaluator()
        sim = simulator.SimConfig(
            self.serve.url,
            self.rate,
            self.max_s,
            seed=self.seed,
            timeline_s=0.1,
            request_prefix=self.prefix,
        )
        self.traffic = Traffic(sim)
        self.traffic.start()
        stack.callback(self.traffic.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(None, None, None)

    def register(self, variant: str) -> int:
        from router.registry import Registry

        registry = Registry(self.state)
        try:
            return registry.register(demo_model_path(variant)).version
        finally:
            registry.close()

    def rollout(self, s: Scenario, timeout_s: float = 420.0) -> dict[str, Any]:
        """Roll out the scenario's challenger and return the verdict when the rollout ends."""
        began = time.monotonic()
        alerts_before = len(self.alerts)
        version = self.register(s.challenger)
        started_wall = time.time()
        rollout_id = self.serve.admin("start", {"version": str(version)})["rollout"]
        watch = _Watch(self.serve, self.on_status)
        extra = _disturb(s, self.serve, watch) if s.disturb else {}

        def ended(st: dict[str, Any]) -> bool:
            return not st.get("rollout") and (st.get("last_rollout") or {}).get("id") == rollout_id

        final = watch.until(ended, began + timeout_s)
        time.sleep(0.5)  # answers in flight at the flip reach the timeline
        stats = self.traffic.live
        deadline = time.monotonic() + 5.0  # delivery runs on its own thread, after the flip
        while len(self.alerts) == alerts_before and time.monotonic() < deadline:
            time.sleep(0.1)
        alert = self.alerts[-1] if len(self.alerts) > alerts_before else None
        seconds = time.monotonic() - began
        return _verdict(s, final, watch, stats, alert, extra, seconds, started_wall)


def run_scenario(
    name: str,
    *,
    rate: float = 2000.0,
    seed: int = 1,
    timeout_s: float = 420.0,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    keep_state: Path | None = None,
) -> dict[str, Any]:
    """Run one scenario on a fresh server and return its verdict (see the module docstring)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; scenarios: {', '.join(SCENARIOS)}")
    session = Session(
        rate=rate,
        seed=seed,
        on_status=on_status,
        keep_state=keep_state,
        prefix=f"{name}-",
        max_s=timeout_s + 60,
    )
    with session:
        verdict = session.rollout(SCENARIOS[name], timeout_s)
        stats = session.traffic.stop()
    if stats is not None:
        verdict["traffic"] = _traffic_summary(stats)
    return verdict


class _Watch:
    def __init__(self, serve: Serve, on_status: Callable[[dict[str, Any]], None] | None) -> None:
        self.serve = serve
        self.on_status = on_status
        self.phases: list[tuple[int, float]] = []
        self.t0 = time.monotonic()

    def until(self, done: Callable[[dict[str, Any]], bool], deadline: float) -> dict[str, Any]:
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status = self.serve.status()
                phase = int(status.get("phase", 0))
                if phase and (not self.phases or self.phases[-1][0] != phase):
                    self.phases.append((phase, round(time.monotonic() - self.t0, 2)))
                if self.on_status:
                    self.on_status(status)
                if status.get("state") not in (None, "loading") and done(status):
                    return status
            time.sleep(0.25)
        raise TimeoutError(
            "the rollout did not finish in time; last status: "
            f"phase {status.get('phase')}, next: {status.get('next')}"
        )


def _disturb(s: Scenario, serve: Serve, watch: _Watch) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    status = watch.until(lambda st: st.get("state") == "running", deadline)
    time.sleep(2.0)  # a little way into phase 1
    before = status["rollout"]
    if s.disturb == "restart-serve":
        serve.stop()
        serve.start()
        _warm_up(serve.url)
        serve.wait_for_evaluator()
        after = watch.until(lambda st: bool(st.get("rollout")), deadline)["rollout"]
        return {
            "restart": {
                "same_rollout": after["id"] == before["id"],
                "phase_before": before["phase"],
                "phase_after": after["phase"],
                "phase_started_kept": after["phase_started"] == before["phase_started"],
            }
        }
    # freeze-evaluator: a hung evaluator (alive, no heartbeat). Workers must fall back to
    # the champion within stale_after_s; the supervisor then replaces the hung process.
    pid = int(status["evaluator"]["pid"])
    os.kill(pid, signal.SIGSTOP)
    frozen, frozen_wall = time.monotonic(), time.time()
    stale = watch.until(lambda st: bool(st.get("stale")), deadline)
    stale_after = time.monotonic() - frozen
    resumed = watch.until(
        lambda st: not st.get("stale") and st.get("evaluator", {}).get("pid") != pid, deadline
    )
    resumed_wall = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    serve.admin("rollback")  # end the scenario; the verdict is about the fail-safe
    return {
        "freeze": {
            "frozen_at": frozen_wall,
            "resumed_at": resumed_wall,
            "stale_seen_s": round(stale_after, 2),
            "effective_split_during_stale": stale.get("effective_split_bp"),
            "resumed_phase": resumed.get("phase"),
            "phase_before": before["phase"],
            "same_rollout": (resumed.get("rollout") or {}).get("id") == before["id"],
        }
    }


def _verdict(
    s: Scenario,
    final: dict[str, Any],
    watch: _Watch,
    stats: SimStats | None,
    alert: dict[str, Any] | None,
    extra: dict[str, Any],
    seconds: float,
    started_wall: float,
) -> dict[str, Any]:
    last = final.get("last_rollout") or {}
    events = final.get("events") or []
    ends = [e for e in events if e["kind"] in ("rolled_back", "stopped", "promoted")]
    end: dict[str, Any] = ends[-1] if ends else {}
    outcome, phase, guardrail = last.get("state"), last.get("phase"), end.get("guardrail")
    detection = None
    if stats is not None and stats.timeline and outcome != "promoted":
        # Seconds from the simulator's start (its timeline's clock).
        if s.disturb == "freeze-evaluator":
            # From the freeze to the start of the first full second with no challenger
            # answer (at a 3% split and 1000 requests/s, chance gives one in e^30).
            bad = extra["freeze"]["frozen_at"] - stats.started_at
            seen, run = None, None
            for t in stats.timeline:
                if t.t < bad:
                    continue
                if t.challenger or t.fallback:
                    run = None
                elif run is None:
                    run = t.t
                if run is not None and t.t + stats.timeline_s - run >= 1.0:
                    seen = run
                    break
        else:
            since = started_wall - stats.started_at
            bad = next(
                (t.t for t in stats.timeline if t.t >= since and (t.challenger or t.fallback)),
                None,
            )
            seen = None if bad is None else stats.first_time_all_champion(bad)
        if bad is not None and seen is not None:
            detection = round(max(seen - bad, 0.0), 2)
    if s.disturb == "freeze-evaluator":
        outcome, guardrail = "rolled_back", "evaluator_heartbeat"
        phase = extra["freeze"]["phase_before"]
    passed = outcome == s.outcome and phase == s.phase and (guardrail or "") in s.guardrails
    return {
        "scenario": s.name,
        "outcome": outcome,
        "phase": phase,
        "guardrail": guardrail,
        "detection_seconds": detection,
        "expected": {"outcome": s.outcome, "phase": s.phase, "guardrail": list(s.guardrails)},
        "passed": passed,
        "reason": last.get("reason"),
        "value": end.get("value"),
        "threshold": end.get("threshold"),
        "rollout": last.get("id"),
        "phases": [{"phase": p, "entered_s": t} for p, t in watch.phases],
        "seconds": round(seconds, 1),
        "alert": alert,
        "traffic": None if stats is None else _traffic_summary(stats),
        **extra,
    }


def _traffic_summary(stats: SimStats) -> dict[str, Any]:
    return {
        "rate": stats.rate,
        "answered": stats.answered,
        "fell_behind": stats.fell_behind,
        "latency_ms": stats.latency_ms,
        "arms": {a: vars(x) for a, x in stats.arms.items()},
    }


def _warm_up(url: str) -> None:
    """First requests pay for lazy imports and JIT: keep them out of the measurements."""
    body = {"request_id": "warm", "features": [[0.0] * len(world.FEATURES)]}
    with httpx.Client(timeout=10) as client:
        for i in range(30):
            body["request_id"] = f"warm-{i}"
            client.post(f"{url}/predict", json=body)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
