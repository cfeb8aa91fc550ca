"""The /predict benchmark's contenders and their states: `rampart serve` (every process of it
on core 0, the evaluator pinned to the same core by `[serve] evaluator_cpu`), the bare
baseline on core 0, and a rollout held in phase 4 with events flowing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np

from harness.scenario_models import model_path
from harness.scenarios import server_config
from harness.serve_process import ADMIN_TOKEN, Serve, free_port, pin

SERVER_CORE = 0
EVENTS_CORE = 1

PLAIN_CONFIG = f"[serve]\nworkers = 1\nevaluator_cpu = {SERVER_CORE}\n"
ASGI_CONFIG = PLAIN_CONFIG + "answer_in_place = false\n"  # every request through the ASGI app

# Phases 1-3 last half a second of policy clock each (1 h at the scenarios' time_scale):
# the rollout reaches phase 4 as soon as the evidence allows, and is paused there.
QUICK_PHASES = (1, 2, 3)  # one policy hour each on the scaled clock: half a second


def rollout_config() -> str:
    """The scenarios' scaled config, the evaluator on the workers' core, quick phases 1-3,
    and a latency guardrail this loaded, shared core cannot trip (the benchmark measures
    latency; a rollback on it would end the rollout being measured)."""
    text = re.sub(r"evaluator_cpu = \S+", f"evaluator_cpu = {SERVER_CORE}", server_config())
    text = text.replace("[guardrails]\n", "[guardrails]\nmax_p99_ms = 1000.0\n", 1)
    for n in QUICK_PHASES:  # the scenarios' config has a section per phase already
        section = f"[phases.{n}]\n"
        assert section in text, section
        text = text.replace(section, f"{section}min_hours = 1.0\n", 1)
    return text


def n_features() -> int:
    """The champion's width (its positional rows)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path("champion")), providers=["CPUExecutionProvider"])
    return int(session.get_inputs()[0].shape[1])


ID_MARKER = "#" * 16  # bench/oloop.c gives every request its own id in its place


def bodies(n_features: int, rows: int, json_body: bool, count: int = 256) -> list[bytes]:
    """`count` /predict bodies of `rows` positional rows (one segment), msgpack or JSON, each
    request id `bench-` and oloop's id marker (wrk sends them as they are)."""
    import json

    rng = np.random.default_rng(5)
    out = []
    for _ in range(count):
        x = rng.normal(size=(rows, n_features)).astype(np.float32)
        features: Any = x[0].tolist() if rows == 1 else x.tolist()
        if json_body:  # JSON the way a client writes it: short decimals
            features = np.round(x, 4)[0].tolist() if rows == 1 else np.round(x, 4).tolist()
        request = {
            "request_id": f"bench-{ID_MARKER}",
            "features": features,
            "segment": {"publisher_category": "news", "device_type": "mobile"},
        }
        out.append(json.dumps(request).encode() if json_body else msgpack.packb(request))
    return out


def server_env() -> dict[str, str]:
    return dict(
        os.environ,
        RAMPART_ADMIN_TOKEN=ADMIN_TOKEN,
        RAMPART_TOKEN_SECRET=secrets.token_hex(16),
        RAMPART_SLACK_WEBHOOK="",
    )


def start_rampart(
    root: Path, config_text: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Serve:
    """`rampart serve --workers 1` on a fresh state with the champion registered, ready and
    its evaluator beating; `cwd`: the checkout it runs from (default: this one)."""
    from router.registry import Registry

    state = root / "state"
    registry = Registry(state)
    try:
        registry.register(model_path("champion"))
    finally:
        registry.close()
    config = root / "rampart.toml"
    config.write_text(config_text)
    serve = Serve(state, config, free_port(), env or server_env(), cwd)
    serve.start()
    serve.warm_up()
    serve.wait_for_evaluator()
    return serve


class Bare:
    """bench/bare_server.py on core 0."""

    def __init__(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "bench.bare_server", "--model", str(model_path("champion"))]
        self.proc = subprocess.Popen(
            [*pin(SERVER_CORE), *cmd, "--port", str(self.port)], start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare server exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            time.sleep(0.2)
        raise RuntimeError("bare server did not come up")

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGTERM)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (children of every thread: the evaluator is spawned by one)."""
    out, frontier = [pid], [pid]
    while frontier:
        found = []
        for p in frontier:
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{p}/task").iterdir():
                    with contextlib.suppress(OSError):
                        found += [int(x) for x in (task / "children").read_text().split()]
        out += found
        frontier = found
    return out


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so the `finally` blocks run: they stop the servers and
    resume any contender `paused` stopped (else it would stay stopped after the benchmark)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """Every process of the trees under `pids` stopped for the block (SIGSTOP; SIGCONT after,
    children first). An idle contender still has periodic work, rampart's evaluator ticking
    each second on the shared core, and it must not land in another contender's run."""
    tree = [p for pid in pids for p in process_tree(pid)]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in reversed(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


def sched_ns(pids: list[int]) -> tuple[int, int]:
    """CPU time and time runnable but waiting for a CPU (ns) of every thread of `pids`, from
    /proc/PID/task/TID/schedstat: on a shared machine the second says how disturbed a run was."""
    cpu = wait = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    c, w, _ = (int(x) for x in (task / "schedstat").read_text().split())
                    cpu += c
                    wait += w
    return cpu, wait


def port_of(serve: Serve) -> int:
    return int(serve.url.rsplit(":", 1)[1])


def phase_of(status: dict[str, Any]) -> int:
    rollout = status.get("rollout") or {}
    return int(rollout.get("phase") or status.get("phase") or 0)


def on_client_core(cmd: list[str]) -> subprocess.Popen[bytes]:
    """`cmd` in the background on the clients' core, in its own session, output dropped."""
    return subprocess.Popen(
        [*pin(EVENTS_CORE), *cmd],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_group(proc: subprocess.Popen[bytes], signum: int, wait_s: float = 10.0) -> None:
    """`signum` to `proc`'s process group, then SIGKILL if it has not exited in `wait_s`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signum)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Events:
    """The ad-server simulator (harness.simulator) against rampart, on the client's core:
    /predict and the impressions and clicks of its answers, until stopped. Used to climb to
    phase 4, before anything is measured: it is Python, and beside the measuring client it
    made that client late (see WrkEvents)."""

    def __init__(self, url: str, rate: float, seconds: float = 3600.0) -> None:
        cmd = [sys.executable, "-m", "harness.simulator", "--url", url, "--rate", str(rate)]
        self.proc = on_client_core([*cmd, "--seconds", str(seconds), "--seed", "3"])

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGINT)


# wrk's script for WrkEvents, one Lua state per connection (`-t` = `-c`), so each answer is
# the one to the request just sent. As the simulator does: a /predict (JSON) of CANDIDATES
# ads drawn from the ground truth, then the impression of the top-scored one and, with that
# ad's true click probability, a click. Each connection pauses DELAY_MS between requests;
# every /predict has its own request id.
EVENTS_LUA = """
local slates = {SLATES}
local headers = {["Content-Type"] = "application/json"}
local n, slate, shown = 0, nil, nil
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
local nonce = math.random(0, 9999)
function delay() return DELAY_MS end
function request()
  if shown then
    local one = '{"token":"%s","type":"%s","prediction":%s}'
    local events = string.format(one, shown[1], "impression", shown[2])
    if math.random() < shown[3] then
      events = events .. "," .. string.format(one, shown[1], "click", shown[2])
    end
    shown = nil
    return wrk.format("POST", "/events", headers, '{"events":[' .. events .. ']}')
  end
  n = n + 1
  slate = slates[n % #slates + 1]
  local id = string.format("%04d%012d", nonce, n)
  return wrk.format("POST", "/predict", headers, (slate[1]:gsub("MARKER", id)))
end
function response(status, headers, body)
  if not slate then return end
  local token = body:match('"token":%s*"([^"]+)"')
  local list = body:match('"predictions":%s*%[([^%]]*)%]')
  if token and list then
    local best, best_p, i = nil, -1, 0
    for text in list:gmatch("[-%d.eE+]+") do
      i = i + 1
      local p = tonumber(text)
      if p and p > best_p then best, best_p = i, p end
    end
    if best then shown = {token, best_p, slate[2][best]} end
  end
  slate = nil
end
"""
CANDIDATES = 4  # harness.simulator's default


def truth_slates(count: int = 512, seed: int = 7) -> list[tuple[bytes, list[float]]]:
    """`count` JSON /predict bodies of CANDIDATES ads from the ground truth (one context,
    its segment, the request id marker), each with its ads' true click probabilities."""
    import json

    from harness import ground_truth

    x = ground_truth.sample_requests(np.random.default_rng(seed), count, CANDIDATES)
    truth = ground_truth.ground_truth_ctr(x)
    segment = ground_truth.segments(x[:, 0, :])
    out = []
    for i in range(count):
        request = {
            "request_id": f"bench-{ID_MARKER}",
            "features": np.round(x[i].astype(np.float64), 5).tolist(),
            "segment": {dim: str(labels[i]) for dim, labels in segment.items()},
        }
        out.append((json.dumps(request).encode(), [float(p) for p in truth[i]]))
    return out


class WrkEvents:
    """An ad server's events to rampart from wrk (C and LuaJIT) on the client's core, as the
    simulator makes them: about `rate` /predict a second of four ads, each followed by the
    impression of the top-scored ad and, with its true click probability, a click. So a held
    rollout sees the traffic it climbed on (clicks drawn at each answer's own prediction, or
    on one ad per request, made the challenger lose the A/B comparison against the champion's
    history and rolled the rollout back). The simulator itself is Python: beside the
    measuring client, even under SCHED_IDLE, it raised that client's send jitter p99 from
    0.08 to 0.65 ms against the bare server (so every latency it reported), and rampart's
    runs paid for it alone.
    """

    CONNECTIONS = 2

    def __init__(self, url: str, rate: float, script_dir: Path) -> None:
        # Each connection sends a /predict and an /events per `2 * delay`, plus round trips.
        delay_ms = max(1, round(1000 * self.CONNECTIONS / (2 * rate)))
        slates = ", ".join(
            f"{{[==[{body.decode().replace(ID_MARKER, 'MARKER')}]==], "
            f"{{{', '.join(repr(p) for p in truth)}}}}}"
            for body, truth in truth_slates()
        )
        script = script_dir / "events.lua"
        script.write_text(
            EVENTS_LUA.replace("{SLATES}", "{" + slates + "}").replace("DELAY_MS", str(delay_ms))
        )
        threads = f"-t{self.CONNECTIONS}"  # a Lua state per connection
        cmd = ["wrk", threads, f"-c{self.CONNECTIONS}", "-d3600s", "--timeout", "5s"]
        self.proc = on_client_core([*cmd, "-s", str(script), url])

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGKILL)


@contextlib.contextmanager
def events_flowing(
    serve: Serve, rate: float, script_dir: Path, timeout_s: float = 30.0
) -> Iterator[dict[str, float]]:
    """WrkEvents sending to `serve` at `rate` from before the block (its first impressions
    counted) to its end; after it, the dict yielded holds the impressions a second counted."""

    def impressions() -> int:
        arms = serve.status().get("arms") or {}
        return sum(int(a.get("impressions", 0)) for a in arms.values())

    before = impressions()
    counted: dict[str, float] = {}
    events = WrkEvents(serve.url, rate, script_dir)
    try:
        deadline = time.monotonic() + timeout_s
        while impressions() == before:
            if time.monotonic() > deadline:
                raise RuntimeError("the events never reached rampart")
            time.sleep(0.1)
        first, t0 = impressions(), time.monotonic()
        yield counted
        counted["impressions_per_s"] = (impressions() - first) / (time.monotonic() - t0)
    finally:
        events.stop()


def hold_phase4(serve: Serve, climb_rate: float = 1500.0, timeout_s: float = 300.0) -> float:
    """Register the better challenger, start its rollout with the simulator driving events
    at `climb_rate`, and pause it as soon as it is in phase 4. Seconds it took."""
    from router.registry import Registry

    started = time.monotonic()
    registry = Registry(Path(serve.cmd[serve.cmd.index("--state-dir") + 1]))
    try:
        version = registry.register(model_path("challenger_better")).version
    finally:
        registry.close()
    events = Events(serve.url, climb_rate)
    try:
        serve.admin("start", {"version": str(version)})
        while time.monotonic() - started < timeout_s:
            status = serve.status()
            if phase_of(status) >= 4:
                serve.admin("pause")
                return time.monotonic() - started
            if not status.get("rollout"):
                raise RuntimeError(f"the rollout ended before phase 4: {status}")
            time.sleep(0.1)
        raise RuntimeError(f"no phase 4 in {timeout_s:g} s: {serve.status()}")
    finally:
        events.stop()
