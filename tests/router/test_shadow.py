"""Phase 0, shadow, against a real `rampart serve`: the challenger scores copies of live
requests off the response path, is judged on them, and never answers a client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support.models import LARGE_VALUE, write_model
from support.redis_server import needs_redis, running_redis
from support.server import (
    STATE_S,
    Server,
    rampart,
    register_pair,
    serving,
    split_in_force,
    start_server,
    stop_server,
    wait_for,
)

from guardrails.rollouts import Journal
from router.registry import Registry, Status

ROW = [0.5, 1.0, -0.5, 2.0]
BAD_ROW = [2 * LARGE_VALUE, 1.0, -0.5, 2.0]  # trips the *_on_large test models
# Small evidence minimums, so a healthy challenger passes in a second of traffic; the
# breach checks act on their own evidence whatever these are.
FAST = """
[rollout]
journal_every_s = 0.0
[guardrails]
min_requests = 50
min_latency_samples = 50
min_predictions = 50
"""


def _config(tmp_path: Path, shadow: str = "", serve: str = "") -> Path:
    path = tmp_path / "rampart.toml"
    phase0 = "[phases.0]\nmin_hours = 0.0\nmin_requests = 100\nmax_per_s = 100000.0\n" + shadow
    path.write_text(FAST + phase0 + (f"[serve]\n{serve}" if serve else ""))
    return path


def in_shadow(status: dict[str, Any]) -> bool:
    """The rollout is in its shadow phase, and the answering worker copies requests to the
    loaded challenger (the evaluator starts it only once every worker has loaded it)."""
    return (
        status.get("phase_name") == "shadow"
        and status.get("state") == "running"
        and status["split_bp"] == 0
        and bool(status["shadow"])
        and status["shadow"]["active"]
    )


def _start_shadow(server: Server) -> dict[str, Any]:
    r = server.admin("start", {"version": "2"})
    assert r.status_code == 200, r.text
    return server.wait_for_status(in_shadow, "the shadow phase with the challenger loaded")


def _post(client: httpx.Client, i: int, row: list[float]) -> dict[str, Any]:
    r = client.post("/predict", json={"request_id": f"s{i}", "features": [row]})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _traffic_until(
    server: Server, row: list[float] | None, reached: Any, what: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send /predict requests (`row`, or rows of varied features) until /status satisfies
    `reached`; the answers and that status."""
    answers: list[dict[str, Any]] = []
    rng = np.random.default_rng(3)
    with httpx.Client(base_url=server.url, timeout=10) as client:

        def step() -> dict[str, Any] | None:
            for _ in range(20):
                features = row or rng.normal(size=4).round(3).tolist()
                answers.append(_post(client, len(answers), features))
            status = server.status()
            if reached(status):
                return status
            if status["rollout"] is None:  # ended otherwise: say how, at once
                pytest.fail(f"the rollout ended: {status['last_rollout']}")
            return None

        status = wait_for(step, STATE_S, what, every=0.0)
    return answers, status


def _outcome(state: Path) -> tuple[str, str, int]:
    journal = Journal(state)
    try:
        (r,) = journal.all()
        ended = journal.events(r.id, kinds=("rolled_back",))
        return r.outcome, r.reason, ended[0].phase if ended else -1
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("kind", "guardrail"),
    [
        pytest.param("nan_on_large", "predictions_in_range", id="nan"),
        pytest.param("raise_on_large", "error_rate", id="raises"),
        # ~0.6 s a run: each cut at challenger_timeout_ms (50 ms), as a live run would be.
        pytest.param("slow", "latency_p99", id="slow"),
    ],
)
def test_shadow_broken_challenger_is_rolled_back_without_answering(
    tmp_path: Path, kind: str, guardrail: str
) -> None:
    state = register_pair(tmp_path / "state", write_model(tmp_path / "b.onnx", kind=kind))
    with serving(state, config=_config(tmp_path)) as server:
        _start_shadow(server)
        answers, status = _traffic_until(
            server,
            BAD_ROW,
            lambda s: s["rollout"] is None and s["last_rollout"]["state"] == "rolled_back",
            "the broken challenger rolled back",
        )
        text = rampart("report", status["last_rollout"]["id"], "--state-dir", str(state))
    assert answers and all(a["arm"] == "champion" and a["model"] == "tiny:1" for a in answers)
    assert not any("fallback" in a for a in answers)  # nobody asked the challenger for these
    outcome, reason, phase = _outcome(state)
    assert (outcome, phase) == ("rolled_back", 0) and reason.startswith(guardrail)
    registry = Registry(state)
    try:
        assert registry.get(2).status == Status.FAILED
    finally:
        registry.close()
    assert text.returncode == 0, text.stderr
    assert "rolled back in phase shadow" in text.stdout
    assert "| shadow |" in text.stdout


def test_shadow_healthy_challenger_advances_to_phase_1(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    with serving(state, config=_config(tmp_path)) as server:
        shadow = _start_shadow(server)
        assert [p["name"] for p in shadow["phases"]][:2] == ["shadow", "1"]
        cli = rampart("status", "--url", server.url)
        assert cli.returncode == 0 and "phase shadow/5" in cli.stdout, cli.stdout
        answers, status = _traffic_until(
            server, None, lambda s: s["phase"] == 1 and split_in_force(s), "phase 1 in force"
        )
    # Every answer until phase 1 was the champion's (the split was 0 the whole shadow phase).
    before = answers[: len(answers) - 20]
    assert before and all(a["arm"] == "champion" for a in before)
    steps = {p["phase"]: p["result"] for p in status["phases"]}
    assert steps[0] == "passed" and steps[1] == "current"
    journal = Journal(state)
    try:
        (advanced,) = journal.events(status["rollout"]["id"], kinds=("advanced",))
    finally:
        journal.close()
    assert advanced.data["from"] == 0 and advanced.data["split_bp"] == 300
    passed = {g["name"]: g["state"] for g in advanced.data["guardrails"]}
    assert "sample_ratio" not in passed and "clicks_per_10k" not in passed
    assert all(s == "pass" for s in passed.values()), passed


def test_shadow_full_queue_drops_and_predict_does_not_wait_for_the_challenger(
    tmp_path: Path,
) -> None:
    """A challenger slow by construction (seconds a run, and a timeout long enough not to
    cut it): /predict answers while its first run is still going, and the copies that find
    the one-place queue full are dropped."""
    slow = write_model(tmp_path / "slow.onnx", kind="slow", iterations=6000)
    state = register_pair(tmp_path / "state", slow)
    config = _config(tmp_path, "queue = 1\n", serve="challenger_timeout_ms = 600000.0\n")
    with serving(state, config=config) as server:
        _start_shadow(server)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            answers = [_post(client, i, ROW) for i in range(20)]
        status = server.status()
        dropped = server.metric("rampart_shadow_dropped_total", arm="challenger", model_version="2")
    assert all(a["arm"] == "champion" for a in answers)
    # Answered while the challenger's first run was still going: no run recorded yet.
    assert status["shadow"]["runs"] == 0 and status["arms"]["challenger"]["requests"] == 0
    # One copy running, one queued, every other dropped, counted in /status and /metrics.
    assert status["shadow"]["dropped"] == dropped == 18


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            "[phases.0]\nsample = 1.5\n",
            "rampart: [phases.0] sample must be in (0, 1], got 1.5",
            id="sample",
        ),
        pytest.param(
            "[phases.0]\nqueue = 0\n",
            "rampart: [phases.0] queue must be in [1, 100000], got 0",
            id="queue",
        ),
        pytest.param(
            "[phases.0]\nmax_per_s = 0\n",
            "rampart: [phases.0] max_per_s must be positive, got 0.0",
            id="rate",
        ),
        pytest.param(
            "[phases.0]\nmin_hours = 5\nmax_hours = 1\n",
            "rampart: [phases.0] needs 0 <= min_hours <= max_hours",
            id="min-over-max",
        ),
        pytest.param(
            "[phases.0]\nqueue = 2.5\n",
            "rampart: [phases.0] queue must be an int, got 2.5",
            id="type",
        ),
        pytest.param(
            "[phases.0]\nsplit_bp = 100\n",
            "rampart: unknown key(s) in [phases.0]: ['split_bp']; known: ['max_hours', "
            "'max_per_s', 'min_hours', 'min_requests', 'queue', 'sample']",
            id="no-split",
        ),
    ],
)
def test_shadow_config_mistake_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "rampart.toml"
    config.write_text(toml)
    out = rampart("serve", "--state-dir", str(tmp_path / "state"), "--config", str(config))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "state").exists()


@needs_redis
def test_shadow_in_a_fleet_a_nan_challenger_is_rolled_back_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `rampart serve --fleet` hosts and a real redis-server: the fleet's decision carries
    the shadow phase to every host, and a NaN seen in one host's copies rolls back all."""
    monkeypatch.setenv("RAMPART_TOKEN_SECRET", "fleet-token-secret-0123456789")
    hosts: list[Server] = []
    with running_redis(tmp_path / "redis") as redis:
        url = f"redis://127.0.0.1:{redis.port}/0"
        for path in (
            write_model(tmp_path / "champion.onnx"),
            write_model(tmp_path / "challenger.onnx", kind="nan_on_large"),
        ):
            out = rampart("models", "register", str(path), "--fleet", url)
            assert out.returncode == 0, out.stderr
        try:
            for host in ("a", "b"):
                config = _config(tmp_path)
                config.write_text(
                    config.read_text() + f'[fleet]\nurl = "{url}"\nhost_id = "{host}"\n'
                )
                hosts.append(start_server(tmp_path / host, config=config))
            a, b = hosts
            r = a.admin("start", {"version": "2"})
            assert r.status_code == 200, r.text
            for server in hosts:
                server.wait_for_status(in_shadow, "the fleet's shadow phase on every host")
            answers, _ = _traffic_until(
                b,
                BAD_ROW,
                lambda s: (s.get("last_rollout") or {}).get("outcome") == "rolled_back",
                "the fleet rolled back",
            )
            last = a.wait_for_status(
                lambda s: s["rollout"] is None and not s["shadow"]["active"], "host a off shadow"
            )["last_rollout"]
        finally:
            for server in hosts:
                stop_server(server)
    assert answers and all(x["arm"] == "champion" for x in answers)
    assert last["phase"] == 0 and last["reason"].startswith("predictions_in_range")
