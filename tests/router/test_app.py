"""The serving path against a real `rampart serve` on loopback."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from conftest import Server, rampart, start_server, stop_server, tiny_model
from modelkit import write_model

ROW = [0.5, 1.0, -0.5, 2.0]
BAD_ROW = [500.0, 1.0, -0.5, 2.0]  # feat0 > 100 trips the "nan" and "high" test models


def _predict(server: Server, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict", content=body, headers={"content-type": content_type}, timeout=10
    )


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def test_predict_answers_msgpack_and_json(server: Server) -> None:
    body = {"request_id": "r-1", "features": [ROW, ROW], "segment": {"device_type": "mobile"}}
    r = _predict(server, msgpack.packb(body), "application/msgpack")
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    answer = msgpack.unpackb(r.content)
    assert answer["arm"] == "champion" and answer["model"] == "tiny:1"
    assert len(answer["predictions"]) == 2 and all(0 <= p <= 1 for p in answer["predictions"])
    named = {"request_id": "r-2", "features": {f"feat{i}": v for i, v in enumerate(ROW)}}
    j = _predict(server, json.dumps(named).encode()).json()
    assert j["predictions"] == pytest.approx(answer["predictions"][:1])
    assert isinstance(j["token"], str) and len(j["token"]) == 32


BAD = [
    pytest.param(b"\xc1\xff", "application/msgpack", 400, "malformed_body", id="malformed-msgpack"),
    pytest.param(b"{not json", "application/json", 400, "malformed_body", id="malformed-json"),
    pytest.param(b"{}", "text/plain", 415, "unsupported_media_type", id="wrong-content-type"),
    pytest.param(
        json.dumps({"features": [ROW]}).encode(),
        "application/json",
        400,
        "missing_request_id",
        id="missing-request-id",
    ),
    pytest.param(
        json.dumps({"request_id": "x" * 129, "features": [ROW]}).encode(),
        "application/json",
        400,
        "request_id_too_long",
        id="long-request-id",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": [[1, 2, 3]]}).encode(),
        "application/json",
        400,
        "wrong_row_width",
        id="wrong-row-width",
    ),
    pytest.param(
        b'{"request_id": "a", "features": [[1, 2, NaN, 4]]}',
        "application/json",
        400,
        "non_finite_feature",
        id="nan-feature",
    ),
    pytest.param(
        msgpack.packb({"request_id": "a", "features": [[1, 2, float("inf"), 4]]}),
        "application/msgpack",
        400,
        "non_finite_feature",
        id="inf-feature",
    ),
    pytest.param(
        json.dumps(
            {
                "request_id": "a",
                "features": {"feat0": 1, "feat1": 1, "feat2": 1, "feat3": 1, "bogus": 2},
            }
        ).encode(),
        "application/json",
        400,
        "unknown_feature",
        id="unknown-feature-name",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": {"feat0": 1}}).encode(),
        "application/json",
        400,
        "missing_feature",
        id="missing-feature-name",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": []}).encode(),
        "application/json",
        400,
        "empty_batch",
        id="empty-batch",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": [ROW] * 257}).encode(),
        "application/json",
        400,
        "batch_too_large",
        id="batch-over-limit",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": [["x", 1, 2, 3]]}).encode(),
        "application/json",
        400,
        "bad_features",
        id="non-numeric-feature",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": [ROW], "segment": "mobile"}).encode(),
        "application/json",
        400,
        "bad_segment",
        id="segment-not-a-map",
    ),
    pytest.param(
        b"x" * (1 << 20 + 1), "application/json", 413, "body_too_large", id="body-over-limit"
    ),
]


@pytest.mark.parametrize(("body", "content_type", "status", "reason"), BAD)
def test_predict_rejects_bad_input_with_reason(
    server: Server, body: bytes, content_type: str, status: int, reason: str
) -> None:
    before = _metric(server, "rampart_requests_total", arm="champion", model_version="1")
    r = _predict(server, body, content_type)
    assert r.status_code == status
    answer = msgpack.unpackb(r.content) if content_type == "application/msgpack" else r.json()
    assert answer["error"] == reason
    assert _metric(server, "rampart_rejected_total", reason=reason) == 1
    assert _metric(server, "rampart_requests_total", arm="champion", model_version="1") == before
    # The worker still serves.
    ok = _predict(server, json.dumps({"request_id": "after", "features": [ROW]}).encode())
    assert ok.status_code == 200


def _events(server: Server, events: list[Any]) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/events", json={"events": events}, timeout=10)
    assert r.status_code == 200
    return dict(r.json())


def test_events_count_impressions_and_clicks(server: Server) -> None:
    answer = _predict(server, json.dumps({"request_id": "e1", "features": [ROW]}).encode()).json()
    token, p = answer["token"], answer["predictions"][0]
    result = _events(
        server,
        [{"token": token, "type": "impression", "prediction": p}] * 3
        + [{"token": token, "type": "click", "prediction": p}],
    )
    assert result == {"accepted": 4, "rejected": 0, "errors": []}
    assert (
        _metric(
            server, "rampart_events_total", arm="champion", model_version="1", type="impression"
        )
        == 3
    )
    assert (
        _metric(server, "rampart_events_total", arm="champion", model_version="1", type="click")
        == 1
    )


def test_events_reject_bad_tokens_and_fields(server: Server, tmp_path: Path) -> None:
    from router.tokens import TokenSigner

    answer = _predict(server, json.dumps({"request_id": "e2", "features": [ROW]}).encode()).json()
    token = answer["token"]
    tampered = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    secret = (server.state / "token.secret").read_bytes()
    signer = TokenSigner(secret, 3600)
    expired = signer.sign(1, 0, 0, 1_000)
    unknown = signer.sign(99, 0, 0, int(__import__("time").time()))
    result = _events(
        server,
        [
            {"token": tampered, "type": "impression", "prediction": 0.1},
            {"token": expired, "type": "impression", "prediction": 0.1},
            {"token": unknown, "type": "impression", "prediction": 0.1},
            {"token": token, "type": "view", "prediction": 0.1},
            {"token": token, "type": "click", "prediction": 1.5},
            "not-an-event",
        ],
    )
    assert result["accepted"] == 0 and result["rejected"] == 6
    assert [e["reason"] for e in result["errors"]] == [
        "bad_token",
        "expired_token",
        "unknown_model_version",
        "bad_event",
        "bad_prediction",
        "bad_event",
    ]
    assert (
        _metric(
            server, "rampart_events_total", arm="champion", model_version="1", type="impression"
        )
        == 0
    )
    too_many = httpx.post(f"{server.url}/events", json={"events": [{}] * 1001}, timeout=10)
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_events"


def test_admin_refuses_without_token(server: Server) -> None:
    r = httpx.post(f"{server.url}/admin/rollout/start", json={"version": "2"}, timeout=10)
    assert r.status_code == 401
    r = httpx.post(
        f"{server.url}/admin/rollout/start",
        json={"version": "2"},
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert r.status_code == 401


def test_rollout_start_splits_traffic_by_hash(server: Server) -> None:
    assert server.admin("start", {"version": "2"}).status_code == 200
    arms = {"champion": 0, "challenger": 0}
    with httpx.Client() as client:
        for i in range(1500):
            r = client.post(
                f"{server.url}/predict", json={"request_id": f"s{i}", "features": [ROW]}
            )
            arms[r.json()["arm"]] += 1
    assert 15 <= arms["challenger"] <= 80  # 3% of 1500 = 45
    status = httpx.get(f"{server.url}/status", timeout=10).json()
    assert status["split_bp"] == 300
    assert status["models"]["challenger"]["version"] == "2"
    assert status["arms"]["challenger"]["requests"] == arms["challenger"]


@pytest.mark.parametrize(
    ("kind", "batch", "fallback", "error_kind"),
    [
        pytest.param("nan", 1, "challenger_invalid", "nan", id="nan-output"),
        pytest.param("high", 1, "challenger_invalid", "out_of_range", id="out-of-range-output"),
        pytest.param("raise", 1, "challenger_error", "raised", id="raises"),
    ],
)
def test_broken_challenger_answered_by_champion(
    tmp_path: Path, kind: str, batch: int, fallback: str, error_kind: str
) -> None:
    state = tmp_path / "state"
    for path in (tiny_model(tmp_path / "a.onnx"), tiny_model(tmp_path / "b.onnx", kind=kind)):
        out = rampart("models", "register", str(path), "--state-dir", str(state))
        assert out.returncode == 0, out.stderr
    server = start_server(state)
    try:
        assert server.admin("start", {"version": "2"}).status_code == 200
        seen = 0
        with httpx.Client() as client:
            for i in range(2000):
                r = client.post(
                    f"{server.url}/predict",
                    json={"request_id": f"b{i}", "features": [BAD_ROW] * batch},
                )
                assert r.status_code == 200
                answer = r.json()
                if "fallback" in answer:
                    assert answer["fallback"] == fallback and answer["arm"] == "champion"
                    assert all(0 <= p <= 1 for p in answer["predictions"])
                    seen += 1
        assert seen > 0
        errors = _metric(
            server,
            "rampart_model_errors_total",
            arm="challenger",
            model_version="2",
            kind=error_kind,
        )
        assert errors == seen
        assert (
            _metric(server, "rampart_fallbacks_total", arm="challenger", model_version="2") == seen
        )
    finally:
        stop_server(server)


def test_registry_refuses_bad_model_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    out = rampart("models", "register", str(corrupt), "--state-dir", str(state))
    assert out.returncode != 0 and "corrupt.onnx" in out.stderr and "not a loadable" in out.stderr
    out = rampart("models", "register", str(tmp_path / "missing.onnx"), "--state-dir", str(state))
    assert out.returncode != 0 and "does not exist" in out.stderr
    for kind in ("nan", "out_of_range", "wrong_input_type", "two_inputs", "wrong_output_shape"):
        path = write_model(tmp_path / f"{kind}.onnx", kind=kind)
        out = rampart("models", "register", str(path), "--state-dir", str(state))
        assert out.returncode != 0, kind
        assert f"{kind}.onnx" in out.stderr, out.stderr
    nan = rampart("models", "register", str(tmp_path / "nan.onnx"), "--state-dir", str(state))
    assert re.search("probe predictions", nan.stderr)


def test_stale_heartbeat_routes_everything_to_champion(server: Server) -> None:
    import os
    import signal
    import time

    from router.shared_memory import SharedMemory

    assert server.admin("start", {"version": "2"}).status_code == 200
    shm = SharedMemory.attach(server.state)
    evaluator_pid = int(shm.control["evaluator_pid"])
    assert evaluator_pid > 0
    # The worker must have seen a fresh heartbeat first (a slow evaluator start looks stale).
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/status", timeout=5).json()["stale"] is True:
        assert time.monotonic() < deadline, "the evaluator never started its heartbeat"
        time.sleep(0.1)
    # Frozen, not killed: the supervisor would restart a dead evaluator at once.
    os.kill(evaluator_pid, signal.SIGSTOP)
    killed = time.monotonic()
    while httpx.get(f"{server.url}/status", timeout=5).json()["stale"] is False:
        assert time.monotonic() - killed < 10, "workers never noticed the stale heartbeat"
        time.sleep(0.1)
    # Default stale_after_s is 3 s; the worker ticker looks every 0.1 s.
    assert time.monotonic() - killed >= 2.0
    with httpx.Client() as client:
        arms = {
            client.post(
                f"{server.url}/predict", json={"request_id": f"st{i}", "features": [ROW]}
            ).json()["arm"]
            for i in range(600)
        }
    assert arms == {"champion"}
    assert _metric(server, "rampart_evaluator_stale") == 1
    os.kill(evaluator_pid, signal.SIGCONT)
    while httpx.get(f"{server.url}/status", timeout=5).json()["stale"] is True:
        assert time.monotonic() - killed < 20, "the heartbeat never came back"
        time.sleep(0.1)


def test_killed_evaluator_is_restarted_and_resumes_the_rollout(server: Server) -> None:
    import os
    import signal

    from router.shared_memory import SharedMemory

    assert server.admin("start", {"version": "2"}).status_code == 200
    shm = SharedMemory.attach(server.state)
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/status", timeout=5).json()["state"] != "running":
        assert time.monotonic() < deadline, "the rollout never reached phase 1"
        time.sleep(0.1)
    before = httpx.get(f"{server.url}/status", timeout=5).json()["rollout"]
    first = int(shm.control["evaluator_pid"])
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while int(shm.control["evaluator_pid"]) in (first, 0):
        assert time.monotonic() < deadline, "the evaluator was not restarted"
        time.sleep(0.1)
    time.sleep(1.5)
    status = httpx.get(f"{server.url}/status", timeout=5).json()
    assert status["rollout"]["id"] == before["id"]
    assert status["rollout"]["phase_started"] == before["phase_started"]
    assert status["phase"] == 1 and status["split_bp"] == 300


def _serve_pair(tmp_path: Path, champion: Path, challenger: Path, config: str = "") -> Server:
    state = tmp_path / "state"
    for path in (champion, challenger):
        out = rampart("models", "register", str(path), "--state-dir", str(state))
        assert out.returncode == 0, out.stderr
    config_path = None
    if config:
        config_path = tmp_path / "rampart.toml"
        config_path.write_text(config)
    server = start_server(state, config=config_path)
    assert server.admin("start", {"version": "2"}).status_code == 200
    # The evaluator answers before workers load the challenger (their ticker does, within
    # 0.1 s); until then its feature names are unknown to them. Wait for the load.
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/status", timeout=5).json()["models"]["challenger"] is None:
        assert time.monotonic() < deadline, "the worker never loaded the challenger"
        time.sleep(0.05)
    return server


def test_slow_challenger_times_out_to_champion(tmp_path: Path) -> None:
    # A 1 µs budget makes every challenger run a timeout: the path, not the model, is under test.
    server = _serve_pair(
        tmp_path,
        tiny_model(tmp_path / "a.onnx"),
        tiny_model(tmp_path / "b.onnx", scale=2.0),
        "[serve]\nchallenger_timeout_ms = 0.001\n",
    )
    try:
        with httpx.Client() as client:
            answers = [
                client.post(
                    f"{server.url}/predict", json={"request_id": f"t{i}", "features": [ROW]}
                ).json()
                for i in range(1500)
            ]
        timed_out = [a for a in answers if a.get("fallback") == "challenger_timeout"]
        assert timed_out and all(a["arm"] == "champion" for a in timed_out)
        assert not any(a["arm"] == "challenger" for a in answers)
        assert _metric(
            server,
            "rampart_model_errors_total",
            arm="challenger",
            model_version="2",
            kind="timeout",
        ) == len(timed_out)
    finally:
        stop_server(server)


def test_arms_with_different_features_take_their_own_inputs(tmp_path: Path) -> None:
    server = _serve_pair(
        tmp_path,
        tiny_model(tmp_path / "a.onnx"),
        tiny_model(tmp_path / "b.onnx", n=3, names=["feat3", "feat1", "extra"]),
    )
    try:
        named = {"feat0": 0.5, "feat1": 1.0, "feat2": -0.5, "feat3": 2.0, "extra": 1.0}
        by_arm: dict[str, set[str]] = {"champion": set(), "challenger": set()}
        fallbacks = set()
        with httpx.Client() as client:
            for i in range(1500):
                a = client.post(
                    f"{server.url}/predict", json={"request_id": f"n{i}", "features": named}
                ).json()
                by_arm[a["arm"]].add(a["model"])
                p = client.post(
                    f"{server.url}/predict", json={"request_id": f"n{i}", "features": [ROW]}
                ).json()
                fallbacks.add(p.get("fallback"))
        # Named rows serve both arms; positional rows (champion order) lack "extra", so the
        # challenger's share falls back to the champion and counts against the challenger.
        assert by_arm == {"champion": {"tiny:1"}, "challenger": {"tiny:2"}}
        assert "challenger_features" in fallbacks
        status = httpx.get(f"{server.url}/status", timeout=5).json()
        assert status["models"]["challenger"]["features"] == ["feat3", "feat1", "extra"]
    finally:
        stop_server(server)
