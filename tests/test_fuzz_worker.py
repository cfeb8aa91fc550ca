"""Property tests of the serving logic in-process: any decoded value in, an answer or a
`Rejected` with a reason code out, never another exception.

A real state directory, real shared memory and real ONNX sessions; the champion (v1, four
features) and a challenger with other features (v2) both loaded, the split at 50%, so
requests reach both arms and both ways of giving features. Budgets are bounded (a few
seconds in all): the server-level fuzz (`test_fuzz_server.py`) covers the socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.in_process import served_state
from support.models import write_model

from router.codec import JSON, MSGPACK, Rejected, decode, media_type
from router.layout import REJECT_REASONS, Reject
from router.worker import Worker

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
NAMES = ["f0", "f1", "f2", "f3", "x"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("fuzz-worker")
    models = [write_model(tmp / "a.onnx"), write_model(tmp / "b.onnx", features=["f3", "x"])]
    config, shm = served_state(tmp, models, split_bp=5000)
    w = Worker(config)
    assert w.route.split_bp == 5000, "both arms must be in play"
    yield w
    w.lock.release()
    shm.close()


# Decoded JSON may hold lone surrogates ("\ud800"), which hypothesis's text leaves out.
with_surrogates = st.text(st.characters(categories=["Cs", "Ll", "Nd"]), min_size=1, max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(NAMES)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(NAMES) | st.text(max_size=4) | st.binary(max_size=3), inner
        )
    ),
    max_leaves=20,
)
# What each wire format can carry: JSON has no bytes and only string keys; msgpack has
# 64-bit integers.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=3), inner)
    ),
    max_leaves=20,
)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
row_positional = st.lists(numbers | values, min_size=0, max_size=6)
row_named = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=3), numbers | values)
features = row_positional | row_named | st.lists(row_positional | row_named, max_size=4) | values
predict_requests = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.text(max_size=140) | with_surrogates | values,
        "features": features,
        "segment": st.dictionaries(
            st.sampled_from(["device_type", "publisher_category", "x"]), values
        )
        | values,
    },
)
event = st.fixed_dictionaries(
    {},
    optional={
        "token": st.text(min_size=32, max_size=32) | values,
        "type": st.sampled_from(["impression", "click", "view"]) | values,
        "prediction": numbers | values,
        "candidate": st.integers(min_value=-3, max_value=300) | values,
    },
)
events_requests = st.fixed_dictionaries({}, optional={"events": st.lists(event | values)}) | values


def _refused_with_a_reason(e: Rejected) -> None:
    assert e.reason in REJECT_REASONS and isinstance(e.reason, Reject)
    assert 400 <= e.status < 500 or (e.status, e.reason) == (503, Reject.MODEL_UNAVAILABLE)


@SETTINGS
@given(request=predict_requests | values)
def test_worker_predict_answers_or_refuses_with_a_reason(worker: Worker, request: Any) -> None:
    try:
        payload, slot, _, _ = worker.predict(request)
    except Rejected as e:
        _refused_with_a_reason(e)
        return
    assert payload["arm"] in ("champion", "challenger") and slot in (0, 1)
    assert all(0.0 <= p <= 1.0 for p in payload["predictions"])
    assert isinstance(payload["token"], str)


@SETTINGS
@given(request=events_requests)
def test_worker_events_answer_or_refuse_with_a_reason(worker: Worker, request: Any) -> None:
    try:
        result = worker.events(request)
    except Rejected as e:
        _refused_with_a_reason(e)
        return
    assert result["accepted"] + result["rejected"] == len(request["events"])
    assert all(err["reason"] in REJECT_REASONS for err in result["errors"])


@SETTINGS
@given(request=predict_requests)
def test_worker_predict_answers_a_valid_token_for_any_valid_request_id(
    worker: Worker, request: dict[str, Any]
) -> None:
    """A request that names its features right is answered whatever its ID: and its
    token is accepted by /events."""
    rid = request.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        return
    payload, _, _, _ = worker.predict({"request_id": rid, "features": [0.1, 0.2, 0.3, 0.4]})
    event = {"token": payload["token"], "type": "impression", "prediction": 0.02}
    assert worker.events({"events": [event]})["accepted"] == 1


@SETTINGS
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_codec_decode_gives_a_value_or_malformed_body_for_json(body: bytes) -> None:
    try:
        decode(body, JSON)
    except Rejected as e:
        assert (e.reason, e.status) == (Reject.MALFORMED_BODY, 400)


@SETTINGS
@given(
    body=st.binary(max_size=200) | msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))
)
def test_codec_decode_gives_a_value_or_malformed_body_for_msgpack(body: bytes) -> None:
    try:
        decode(body, MSGPACK)
    except Rejected as e:
        assert (e.reason, e.status) == (Reject.MALFORMED_BODY, 400)


@SETTINGS
@given(value=st.binary(max_size=40))
def test_codec_media_type_takes_any_header_value(value: bytes) -> None:
    try:
        assert media_type([(b"content-type", value)]) in (JSON, MSGPACK)
    except Rejected as e:
        assert (e.reason, e.status) == (Reject.UNSUPPORTED_MEDIA_TYPE, 415)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param({"request_id": "\ud800", "features": [0.1] * 4}, id="lone-surrogate-id"),
        pytest.param(
            {"request_id": "r", "features": {"f0": 1, b"f9": 1, "z": 1, "f1": 1, "f2": 1, "f3": 1}},
            id="bytes-and-str-feature-names",
        ),
    ],
)
def test_worker_predict_examples_once_found_by_fuzzing(worker: Worker, request_: Any) -> None:
    try:
        worker.predict(request_)
    except Rejected as e:
        _refused_with_a_reason(e)
