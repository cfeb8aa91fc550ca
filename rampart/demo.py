"""`rampart demo`: serve the embedded demo models and drive traffic through them.

Starts `rampart serve` on a temporary state directory with the shipped champion
and challenger, starts a rollout (3% to the challenger), sends /predict requests
and posts impressions and clicks, and prints what the server reports each
second. Leaves nothing running.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np

SEGMENTS = {
    "publisher_category": ["news", "gaming", "defi", "wallet", "social"],
    "device_type": ["mobile", "desktop", "tablet"],
    "country_tier": ["tier1", "tier2", "tier3"],
    "creative_type": ["banner", "native", "video"],
}


def _demo_models() -> list[Path]:
    root = resources.files("router") / "demo"
    return [Path(str(root / "champion.onnx")), Path(str(root / "challenger.onnx"))]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rampart serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("rampart serve did not become ready")


def run_demo(port: int = 8000, seconds: float = 10.0) -> int:
    token = secrets.token_hex(16)
    env = dict(os.environ, RAMPART_ADMIN_TOKEN=token)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="rampart-demo-") as tmp:
        state = Path(tmp) / "state"
        from router.registry import Registry

        registry = Registry(state)
        champion, challenger = (registry.register(p) for p in _demo_models())
        registry.close()
        print(f"registered champion {champion.label} and candidate {challenger.label}")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rampart.cli",
                "serve",
                "--state-dir",
                str(state),
                "--port",
                str(port),
            ],
            env=env,
            start_new_session=True,
        )
        try:
            _wait_ready(url, proc)
            print(f"serving on {url}")
            with httpx.Client(base_url=url, timeout=10) as client:
                r = client.post(
                    "/admin/rollout/start",
                    json={"version": str(challenger.version)},
                    headers={"Authorization": f"Bearer {token}"},
                )
                print(f"rollout start: {r.json()}")
                _traffic(client, champion.features, seconds)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print("demo finished; server stopped")
    return 0


def _traffic(client: httpx.Client, features: tuple[str, ...], seconds: float) -> None:
    rng = np.random.default_rng(7)
    pick = random.Random(7)
    end = time.monotonic() + seconds
    next_report = time.monotonic() + 1
    i = 0
    events: list[dict[str, object]] = []
    while time.monotonic() < end:
        rows = rng.normal(size=(5, len(features))).astype(np.float32)
        segment = {dim: pick.choice(values) for dim, values in SEGMENTS.items()}
        answer = client.post(
            "/predict",
            json={
                "request_id": f"demo-{i}",
                "features": [dict(zip(features, map(float, row), strict=True)) for row in rows],
                "segment": segment,
            },
        ).json()
        i += 1
        best = max(answer["predictions"])
        events.append({"token": answer["token"], "type": "impression", "prediction": best})
        if pick.random() < best:
            events.append({"token": answer["token"], "type": "click", "prediction": best})
        if len(events) >= 50:
            client.post("/events", json={"events": events})
            events = []
        if time.monotonic() >= next_report:
            next_report += 1
            _report(client.get("/status").json())
    if events:
        client.post("/events", json={"events": events})
    _report(client.get("/status").json())


def _report(status: dict[str, object]) -> None:
    arms = status["arms"]
    assert isinstance(arms, dict)
    parts = [f"split {int(status['split_bp']) / 100:.1f}%"]  # type: ignore[call-overload]
    for arm in ("champion", "challenger"):
        a = arms[arm]
        ctr = a["clicks"] / a["impressions"] if a["impressions"] else 0.0
        parts.append(
            f"{arm}: {a['requests']} req, {a['impressions']} impr, "
            f"{a['clicks']} clicks (CTR {ctr:.2%}), {a['errors']} errors"
        )
    print("  " + " | ".join(parts), flush=True)
