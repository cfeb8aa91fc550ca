"""Benchmark: fleet mode under faults, with real `rampart serve --fleet` hosts and Redis.

- breach: a NaN challenger served by one host of three; seconds from the first NaN that
  host answered (as the client saw it) until every host serves 100% champion;
- failover: the leader's whole `rampart serve` SIGKILLed mid-rollout; seconds until
  another host leads and has ticked the same rollout;
- store down: Redis SIGKILLed for `--outage-s` while a client sends to every host;
  failed `/predict` answers (anything but 200) during the outage.

    python -m bench.bench_fleet_faults [--trials 5] [--outage-s 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from harness import ground_truth
from harness.redis_process import private_redis
from harness.scenario_models import model_path
from harness.serve_process import ADMIN_TOKEN, Serve, free_port

FLEET = "faults"
SECRET = "bench-fleet-token-secret"
POLL_S = 0.02


class Host:
    def __init__(self, root: Path, url: str, host_id: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config = root / f"{host_id}.toml"
        config.write_text(
            f'[fleet]\nurl = "{url}"\nname = "{FLEET}"\nhost_id = "{host_id}"\nlease_s = 3.0\n'
        )
        env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN, RAMPART_TOKEN_SECRET=SECRET)
        self.id = host_id
        self.serve = Serve(root / host_id, config, free_port(), env)
        self.serve.cmd = [c for c in self.serve.cmd if c not in ("taskset", "-c", "0")]

    @property
    def url(self) -> str:
        return self.serve.url

    def start(self) -> Host:
        self.serve.start()
        self.serve.wait_for_evaluator()
        return self

    def status(self) -> dict[str, Any]:
        return self.serve.status()

    def kill(self) -> None:
        assert self.serve.proc is not None
        os.killpg(self.serve.proc.pid, signal.SIGKILL)
        self.serve.proc.wait()


def _register(url: str, variant: str) -> str:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "rampart.cli", "models", "register"),
            *(str(model_path(variant)), "--fleet", url, "--fleet-name", FLEET),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, KeyError, TypeError):
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"{what}: not reached in {timeout:g} s (last: {value!r})")


def _rows(n: int) -> list[list[float]]:
    return [[float(v) for v in r] for r in ground_truth.sample_features(np.random.default_rng(), n)]


def _start(hosts: list[Host], version: str) -> None:
    r = httpx.post(
        f"{hosts[0].url}/admin/rollout/start",
        json={"version": version},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    _wait(
        lambda: (
            all(h.status()["effective_split_bp"] > 0 for h in hosts)
            or [(h.id, h.status()["effective_split_bp"], h.status()["fleet"]) for h in hosts]
        ),
        60,
        "the split in force",
    )


def breach(url: str, root: Path, trials: int) -> list[float]:
    _register(url, "champion")
    hosts = [Host(root, url, f"b{i}").start() for i in range(3)]
    out = []
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(trials):
                _start(hosts, _register(url, "broken_nan"))
                first = None
                while first is None:
                    for row in _rows(20):
                        body = {"request_id": uuid.uuid4().hex, "features": [row]}
                        answer = client.post(f"{hosts[0].url}/predict", json=body).json()
                        if answer.get("fallback") == "challenger_invalid":
                            first = time.monotonic()
                            break
                _wait(
                    lambda: all(h.status()["effective_split_bp"] == 0 for h in hosts),
                    30,
                    "every host at 100% champion",
                )
                out.append(time.monotonic() - first)
    finally:
        for h in hosts:
            h.serve.stop()
    return out


def failover(url: str, root: Path, trials: int) -> list[float]:
    _register(url, "champion")
    hosts = {f"f{i}": Host(root, url, f"f{i}").start() for i in range(3)}
    _start(list(hosts.values()), _register(url, "challenger_better"))
    out = []
    try:
        for _ in range(trials):
            some = next(iter(hosts.values()))
            old = _wait(lambda h=some: h.status()["fleet"]["leader"], 30, "a leader")
            rollout = some.status()["rollout"]["id"]
            hosts[old].kill()
            killed = time.time()
            t0 = time.monotonic()
            survivors = [h for k, h in hosts.items() if k != old]

            _wait(
                lambda s=survivors, old=old, killed=killed, rollout=rollout: any(
                    _took_over(h.status(), old, killed, rollout) for h in s
                ),
                30,
                "a new leader deciding",
            )
            out.append(time.monotonic() - t0)
            hosts[old] = Host(root, url, old).start()  # back for the next trial
    finally:
        for h in hosts.values():
            h.serve.stop()
    return out


def _took_over(st: dict[str, Any], old: str, killed: float, rollout: str) -> bool:
    """This host leads now (its own status is the leader's, fresh each tick), has ticked
    since the kill, and decides the same rollout."""
    return bool(
        st["fleet"]["leader"] not in (None, old)
        and st["fleet"]["host"] == st["fleet"]["leader"]
        and (st.get("evaluator") or {}).get("updated", 0) > killed
        and (st.get("rollout") or {}).get("id") == rollout
    )


def store_down(root: Path, outage_s: float) -> dict[str, int]:
    with private_redis() as url:
        _register(url, "champion")
        hosts = [Host(root, url, f"s{i}").start() for i in range(2)]
        _start(hosts, _register(url, "challenger_better"))
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        pid = int(subprocess.check_output(["pgrep", "-f", f"redis-server.*{port}"]).split()[0])
        sent = failed = 0
        try:
            with httpx.Client(timeout=5) as client:
                os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + outage_s
                rows = _rows(200)
                while time.monotonic() < end:
                    for h in hosts:
                        body = {"request_id": uuid.uuid4().hex, "features": [rows[sent % 200]]}
                        try:
                            ok = client.post(f"{h.url}/predict", json=body).status_code == 200
                        except httpx.HTTPError:
                            ok = False
                        sent += 1
                        failed += not ok
                unreachable = all(h.status()["fleet"]["store"] == "unreachable" for h in hosts)
        finally:
            for h in hosts:
                h.serve.stop()
    return {"sent": sent, "failed": failed, "every_host_said_unreachable": int(unreachable)}


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
        "trials": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--outage-s", type=float, default=5.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with private_redis() as url:
            b = breach(url, root / "breach", args.trials)
        with private_redis() as url:
            f = failover(url, root / "failover", args.trials)
        s = store_down(root / "down", args.outage_s)
    out = {
        "breach_to_every_host_champion": _summary(b),
        "leader_killed_to_new_leader_deciding": _summary(f),
        "store_down": s,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
