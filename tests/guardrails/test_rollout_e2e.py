"""A rollout against a real `rampart serve`: real HTTP, real workers, the real evaluator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
from conftest import ADMIN_TOKEN, rampart, start_server, stop_server

DEMO = Path(__file__).resolve().parents[2] / "router" / "demo"
MSGPACK = {"content-type": "application/msgpack"}


def _traffic(url: str, stop: threading.Event, answers: list[tuple[float, str]]) -> None:
    """~150 requests/s of random rows, each shown and sometimes clicked."""
    rng = np.random.default_rng(5)
    with httpx.Client(base_url=url, timeout=5) as client:
        i = 0
        while not stop.is_set():
            rows = rng.standard_normal((4, 30)).astype(np.float32).tolist()
            body = msgpack.packb({"request_id": f"e2e-{i}", "features": rows})
            r = client.post("/predict", content=body, headers=MSGPACK)
            i += 1
            if r.status_code != 200:
                continue
            out = msgpack.unpackb(r.content)
            answers.append((time.monotonic(), out["arm"]))
            shown = {"token": out["token"], "prediction": out["predictions"][0]}
            events = [{**shown, "type": "impression"}]
            if rng.random() < 0.05:
                events.append({**events[0], "type": "click"})
            client.post("/events", json={"events": events})
            time.sleep(0.005)


def test_constant_challenger_rolls_back_in_phase_one_end_to_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for name in ("champion", "broken_constant"):
        out = rampart("models", "register", str(DEMO / f"{name}.onnx"), "--state-dir", str(state))
        assert out.returncode == 0, out.stderr
    config = tmp_path / "rampart.toml"
    config.write_text(
        "[rollout]\ntime_scale = 0.0002777777777777778\n"  # one second per hour
        "[guardrails]\nmin_predictions = 200\n"
        "[phases.1]\nsplit_bp = 900\n"  # a bigger first slice: evidence in seconds
    )
    server = start_server(state, config=config)
    stop = threading.Event()
    answers: list[tuple[float, str]] = []
    sender = threading.Thread(target=_traffic, args=(server.url, stop, answers), daemon=True)
    try:
        sender.start()
        started = server.admin("start", {"version": "2"})
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/status", timeout=5).json()
            last = status.get("last_rollout") or {}
            if isinstance(last, dict) and last.get("state") == "rolled_back":
                break
            time.sleep(0.2)
        flipped = time.monotonic()
        assert status["state"] == "idle" and status["split_bp"] == 0, status
        last = status["last_rollout"]
        assert isinstance(last, dict) and last["phase"] == 1
        assert str(last["reason"]).startswith("prediction_spread")
        events = status["events"]
        assert isinstance(events, list)
        rollback = next(e for e in events if e["kind"] == "rolled_back")
        assert rollback["guardrail"] == "prediction_spread"
        # Within one worker tick of the flip every answer is the champion's.
        time.sleep(0.3)
        later = [arm for t, arm in list(answers) if t > flipped + 0.2]
        assert later and set(later) == {"champion"}
        models = rampart("models", "list", "--state-dir", str(state)).stdout
        assert "failed" in models and "prediction_spread" in models
    finally:
        stop.set()
        sender.join(10)
        stop_server(server)
    assert ADMIN_TOKEN
