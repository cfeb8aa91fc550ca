"""The serving path against a real `rampart serve` on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from support.models import LARGE_VALUE, run_model, write_model
from support.server import (
    HOLD_SPLIT,
    Server,
    arm_of,
    rampart,
    register_pair,
    request_ids,
    serving,
)

from guardrails.cpu_budget import EVALUATOR_NICE
from router.tokens import TOKEN_CHARS

ROW = [0.5, 1.0, -0.5, 2.0]
BAD_ROW = [2 * LARGE_VALUE, 1.0, -0.5, 2.0]  # trips the *_on_large test models


def _predict(server: Server, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict", content=body, headers={"content-type": content_type}, timeout=10
    )


def test_predict_answers_msgpack_and_json(server: Server) -> None:
    body = {"request_id": "r-1", "features": [ROW, ROW], "segment": {"device_type": "mobile"}}
    r = _predict(server, msgpack.packb(body), "application/msgpack")
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    answer = msgpack.unpackb(r.content)
    assert answer["arm"] == "champion" and answer["model"] == "tiny:1"
    assert len(answer["predictions"]) == 2 and all(0 <= p <= 1 for p in answer["predictions"])
    named = {"request_id": "r-2", "features": {f"f{i}": v for i, v in enumerate(ROW)}}
    j = _predict(server, json.dumps(named).encode()).json()
    assert j["predictions"] == pytest.approx(answer["predictions"][:1])
    assert isinstance(j["token"], str) and len(j["token"]) == TOKEN_CHARS


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
                "features": {"f0": 1, "f1": 1, "f2": 1, "f3": 1, "bogus": 2},
            }
        ).encode(),
        "application/json",
        400,
        "unknown_feature",
        id="unknown-feature-name",
    ),
    pytest.param(
        json.dumps({"request_id": "a", "features": {"f0": 1}}).encode(),
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


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for every bad-input case: each case counts its own refusal from before."""
    with serving(register_pair(tmp_path_factory.mktemp("refusing") / "state")) as s:
        yield s


@pytest.mark.parametrize(("body", "content_type", "status", "reason"), BAD)
def test_predict_rejects_bad_input_with_reason(
    refusing: Server, body: bytes, content_type: str, status: int, reason: str
) -> None:
    server = refusing
    before = server.metric("rampart_requests_total", arm="champion", model_version="1")
    refused = server.metric("rampart_rejected_total", reason=reason)
    r = _predict(server, body, content_type)
    assert r.status_code == status
    answer = msgpack.unpackb(r.content) if content_type == "application/msgpack" else r.json()
    assert answer["error"] == reason
    assert server.metric("rampart_rejected_total", reason=reason) == refused + 1
    assert server.metric("rampart_requests_total", arm="champion", model_version="1") == before
    # The worker still serves.
    ok = _predict(server, json.dumps({"request_id": "after", "features": [ROW]}).encode())
    assert ok.status_code == 200


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


def _answer(client: httpx.Client, request_id: str, features: Any = (ROW,)) -> dict[str, Any]:
    r = client.post("/predict", json={"request_id": request_id, "features": list(features)})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_rollout_start_splits_traffic_by_hash(server: Server) -> None:
    status = server.start_rollout("2")  # returns once the 3% split is in force
    assert status["split_bp"] == 300 and status["models"]["challenger"]["version"] == "2"
    seed = server.hash_seed()
    ids = [f"s{i}" for i in range(1500)]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        arms = [_answer(client, rid)["arm"] for rid in ids]
    assert arms == [arm_of(rid, seed, 300) for rid in ids]  # each request where its hash says
    assert 15 <= arms.count("challenger") <= 80  # 3% of 1500 = 45
    assert server.status()["arms"]["challenger"]["requests"] == arms.count("challenger")


def _held_rollout(tmp_path: Path, candidate: Path | None = None, serve: str = "") -> Path:
    """A state directory with champion v1 and `candidate` v2, and a config that keeps the
    split while the test holds the evaluator still."""
    register_pair(tmp_path / "state", candidate)
    config = tmp_path / "rampart.toml"
    config.write_text(HOLD_SPLIT + serve)
    return config


@pytest.mark.parametrize(
    ("kind", "fallback", "error_kind"),
    [
        pytest.param("nan_on_large", "challenger_invalid", "nan", id="nan-output"),
        pytest.param(
            "out_of_range_on_large", "challenger_invalid", "out_of_range", id="out-of-range-output"
        ),
        pytest.param("raise_on_large", "challenger_error", "raised", id="raises"),
    ],
)
def test_broken_challenger_answered_by_champion(
    tmp_path: Path, kind: str, fallback: str, error_kind: str
) -> None:
    config = _held_rollout(tmp_path, write_model(tmp_path / "b.onnx", kind=kind))
    with serving(tmp_path / "state", config=config) as server:
        server.start_rollout("2")
        seed = server.hash_seed()
        # Held still: the evaluator would roll the broken challenger back within a tick.
        with server.evaluator_stopped(), httpx.Client(base_url=server.url, timeout=10) as client:
            broken = [
                _answer(client, rid, [BAD_ROW]) for rid in request_ids(seed, 300, "challenger", 20)
            ]
            served = [
                _answer(client, rid, [BAD_ROW]) for rid in request_ids(seed, 300, "champion", 20)
            ]
            errors = server.metric(
                "rampart_model_errors_total",
                arm="challenger",
                model_version="2",
                kind=error_kind,
            )
            fallbacks = server.metric(
                "rampart_fallbacks_total", arm="challenger", model_version="2"
            )
        assert all(a["arm"] == "champion" and a["fallback"] == fallback for a in broken)
        assert all(0 <= p <= 1 for a in broken for p in a["predictions"])
        assert all(a["arm"] == "champion" and "fallback" not in a for a in served)
        assert errors == fallbacks == 20


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
    # The split must be in force first, or "all champion" would prove nothing.
    server.start_rollout("2")
    challengers = request_ids(server.hash_seed(), 300, "challenger", 20)
    with server.evaluator_stopped():
        frozen = time.monotonic()
        server.wait_for_status(lambda s: s["stale"] is True, "workers noticing the stale heartbeat")
        # Default stale_after_s is 3 s: not before the heartbeat is that old.
        assert time.monotonic() - frozen >= 2.0
        with httpx.Client(base_url=server.url, timeout=10) as client:
            arms = {_answer(client, rid)["arm"] for rid in challengers}
        assert arms == {"champion"}
        assert server.metric("rampart_evaluator_stale") == 1
    status = server.wait_for_status(lambda s: s["stale"] is False, "the heartbeat coming back")
    assert status["effective_split_bp"] == 300


def test_killed_evaluator_is_restarted_and_resumes_the_rollout(server: Server) -> None:
    before = server.start_rollout("2")
    first = int(before["evaluator"]["pid"])
    os.kill(first, signal.SIGKILL)
    # The status the restarted evaluator publishes, not the file the killed one left behind.
    status = server.wait_for_status(
        lambda s: s["evaluator"]["pid"] != first, "a restarted evaluator publishing its status"
    )
    assert status["rollout"]["id"] == before["rollout"]["id"]
    assert status["rollout"]["phase_started"] == before["rollout"]["phase_started"]
    assert status["phase"] == 1 and status["split_bp"] == 300


def test_evaluator_gives_way_to_the_workers_on_a_shared_cpu(server: Server) -> None:
    pid = int(server.status()["evaluator"]["pid"])
    # /proc/PID/stat after the command's ")": field 3 (state) first; nice is 19, policy 41.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    nice, policy = int(fields[19 - 3]), int(fields[41 - 3])
    assert policy == os.SCHED_BATCH and nice >= EVALUATOR_NICE


def test_slow_challenger_times_out_to_champion(tmp_path: Path) -> None:
    # A 1 µs budget makes every challenger run a timeout: the path, not the model, is under test.
    config = _held_rollout(tmp_path, serve="challenger_timeout_ms = 0.001\n")
    with serving(tmp_path / "state", config=config) as server:
        server.start_rollout("2")
        seed = server.hash_seed()
        with server.evaluator_stopped(), httpx.Client(base_url=server.url, timeout=10) as client:
            slow = [_answer(client, rid) for rid in request_ids(seed, 300, "challenger", 20)]
            timeouts = server.metric(
                "rampart_model_errors_total",
                arm="challenger",
                model_version="2",
                kind="timeout",
            )
        assert all(a["arm"] == "champion" and a["fallback"] == "challenger_timeout" for a in slow)
        assert timeouts == 20


def test_arms_with_different_features_take_their_own_inputs(tmp_path: Path) -> None:
    config = _held_rollout(
        tmp_path, write_model(tmp_path / "b.onnx", features=["f3", "f1", "extra"])
    )
    named = {"f0": 0.5, "f1": 1.0, "f2": -0.5, "f3": 2.0, "extra": 1.0}
    with serving(tmp_path / "state", config=config) as server:
        server.start_rollout("2")
        seed = server.hash_seed()
        challengers = request_ids(seed, 300, "challenger", 10)
        champions = request_ids(seed, 300, "champion", 10)
        # Held still: the positional rows' fallbacks count as challenger errors.
        with server.evaluator_stopped(), httpx.Client(base_url=server.url, timeout=10) as client:
            by_name = {rid: _answer(client, rid, [named]) for rid in challengers + champions}
            by_position = {rid: _answer(client, rid) for rid in challengers}
        # Named rows serve both arms; positional rows (champion order) lack "extra", so the
        # challenger's share falls back to the champion.
        assert {by_name[rid]["model"] for rid in challengers} == {"tiny:2"}
        assert {by_name[rid]["model"] for rid in champions} == {"tiny:1"}
        assert {a["fallback"] for a in by_position.values()} == {"challenger_features"}
        assert server.status()["models"]["challenger"]["features"] == ["f3", "f1", "extra"]


def test_slow_challenger_is_cut_at_its_deadline(tmp_path: Path) -> None:
    """A challenger whose run takes far longer than challenger_timeout_ms: its run is
    stopped at the deadline, so the request waits the timeout plus the champion's run,
    not the challenger's whole run."""
    slow = write_model(tmp_path / "b.onnx", kind="slow")
    start = time.perf_counter()
    run_model(slow, np.zeros((1, len(ROW)), dtype=np.float32))
    full_s = time.perf_counter() - start  # one whole run, on this machine, now
    config = _held_rollout(tmp_path, slow, serve="challenger_timeout_ms = 50\n")
    with serving(tmp_path / "state", config=config) as server:
        server.start_rollout("2")
        seed = server.hash_seed()
        with server.evaluator_stopped(), httpx.Client(base_url=server.url, timeout=30) as client:
            took, answers = [], []
            for rid in request_ids(seed, 300, "challenger", 5):
                sent = time.perf_counter()
                answers.append(_answer(client, rid))
                took.append(time.perf_counter() - sent)
            timeouts = server.metric(
                "rampart_model_errors_total", arm="challenger", model_version="2", kind="timeout"
            )
    assert all(a["arm"] == "champion" and a["fallback"] == "challenger_timeout" for a in answers)
    assert timeouts == 5
    assert max(took) < full_s / 2, (took, full_s)
