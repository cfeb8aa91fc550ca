"""Decoding and validating request bodies: media types, both encodings, and feature rows."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pytest

from router.codec import (
    JSON,
    MSGPACK,
    Rejected,
    all_finite,
    decode,
    encode,
    encode_answer,
    kind_of,
    media_type,
    named_rows,
    positional_rows,
)

NAMES = ("a", "b", "c")
KNOWN = frozenset((*NAMES, "other_arms_feature"))


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param(b"application/json", JSON, id="json"),
        pytest.param(b"application/msgpack", MSGPACK, id="msgpack"),
        pytest.param(b"application/json; charset=utf-8", JSON, id="json-charset"),
        pytest.param(b"Application/MsgPack ", MSGPACK, id="case-and-space"),
        pytest.param(b"application/x-msgpack", MSGPACK, id="x-msgpack"),
        pytest.param(b"application/vnd.msgpack", MSGPACK, id="vnd-msgpack"),
    ],
)
def test_media_type_accepts_json_and_msgpack_spellings(value: bytes, kind: bytes) -> None:
    headers = [(b"host", b"rampart"), (b"content-type", value)]
    assert media_type(headers) == kind


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"content-type", b"text/plain")], id="text-plain"),
        pytest.param([(b"content-type", b"application/jsonx")], id="near-miss"),
        pytest.param([(b"content-type", b"")], id="empty"),
        pytest.param([(b"accept", b"application/json")], id="absent"),
    ],
)
def test_media_type_rejects_others_with_415(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Rejected) as e:
        media_type(headers)
    assert (e.value.reason, e.value.status) == ("unsupported_media_type", 415)


BODY: dict[str, Any] = {
    "request_id": "r-1",
    "features": [[0.5, 1.0], {"a": 2}],
    "segment": {"device_type": "mobile"},
}


@pytest.mark.parametrize(
    "kind", [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]
)
def test_codec_decode_reads_what_encode_wrote(kind: bytes) -> None:
    assert decode(encode(BODY, kind), kind) == BODY


def test_codec_encode_writes_compact_json_and_binary_msgpack() -> None:
    assert encode({"arm": "champion", "predictions": [0.5]}, JSON) == (
        b'{"arm":"champion","predictions":[0.5]}'
    )
    packed = encode({"token": b"\x01\x02"}, MSGPACK)
    assert msgpack.unpackb(packed, raw=False) == {"token": b"\x01\x02"}  # bin, not str


def _answer(predictions: list[float], model: str = "ctr-mlp:3") -> dict[str, Any]:
    return {"arm": "champion", "model": model, "predictions": predictions, "token": "Ab-_" * 13}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_answer([0.012345679104328156]), id="one-row"),
        pytest.param(_answer([1e-05, 3.2e-07, 0.0, 1.0, 0.5]), id="exponents-and-ends"),
        pytest.param(_answer([i / 997 for i in range(100)]), id="100-rows"),
        pytest.param(_answer([0.5], model='modèle "ü"\\:2'), id="label-needing-escapes"),
        pytest.param({**_answer([0.5]), "arm": "challenger"}, id="challenger"),
        pytest.param({**_answer([0.5]), "fallback": "challenger_timeout"}, id="fallback"),
        pytest.param(_answer([float("nan"), float("inf")]), id="non-finite"),
        pytest.param({"token": "t", "predictions": [0.5], "model": "m", "arm": "a"}, id="order"),
    ],
)
@pytest.mark.parametrize(
    "kind", [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]
)
def test_encode_answer_writes_what_encode_writes(payload: dict[str, Any], kind: bytes) -> None:
    expected = (
        json.dumps(payload, separators=(",", ":")).encode()
        if kind == JSON
        else msgpack.packb(payload, use_bin_type=True)
    )
    for _ in range(2):  # the first call builds the answer's head, the second reuses it
        assert encode_answer(payload, kind) == expected == encode(payload, kind)


def test_encode_answer_heads_are_per_arm_and_model() -> None:
    a = encode_answer(_answer([0.5], model="a:1"), JSON)
    b = encode_answer(_answer([0.5], model="b:2"), JSON)
    assert json.loads(a)["model"] == "a:1"
    assert json.loads(b)["model"] == "b:2"


def test_kind_of_exact_header_and_none() -> None:
    assert kind_of(b"application/msgpack") is MSGPACK
    assert kind_of(b"application/json") is JSON
    with pytest.raises(Rejected) as e:
        kind_of(None)
    assert e.value.status == 415


@pytest.mark.parametrize(
    ("body", "kind", "name"),
    [
        pytest.param(b"{not json", JSON, "JSON", id="json"),
        pytest.param(b"", JSON, "JSON", id="json-empty"),
        pytest.param(b"\xc1", MSGPACK, "msgpack", id="msgpack-reserved-byte"),
        pytest.param(b"\x92\x01", MSGPACK, "msgpack", id="msgpack-truncated"),
        pytest.param(msgpack.packb({1: "x"}), MSGPACK, "msgpack", id="msgpack-int-key"),
    ],
)
def test_codec_decode_rejects_malformed_bodies(body: bytes, kind: bytes, name: str) -> None:
    with pytest.raises(Rejected) as e:
        decode(body, kind)
    assert (e.value.reason, e.value.status) == ("malformed_body", 400)
    assert e.value.detail.startswith(f"body is not valid {name}")


# -- positional rows --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("features", "expected"),
    [
        pytest.param([1, 2.5, -3], [[1, 2.5, -3]], id="one-row"),
        pytest.param([[1, 2], [3, 4]], [[1, 2], [3, 4]], id="batch"),
        pytest.param([["1.5", 2]], [[1.5, 2]], id="numeric-string"),
        pytest.param([[True, 0]], [[1, 0]], id="booleans"),
    ],
)
def test_positional_rows_give_float32_rows(features: list[Any], expected: list[Any]) -> None:
    x = positional_rows(features, max_batch=8)
    assert x.dtype == np.float32 and x.ndim == 2
    np.testing.assert_array_equal(x, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        pytest.param([[1, 2], [3]], "wrong_row_width", id="ragged"),
        pytest.param([["x", 1]], "bad_features", id="word"),
        pytest.param([[None, 1]], "non_finite_feature", id="null-reads-as-nan"),
        pytest.param([{"a": 1}, 2], "bad_features", id="map-among-numbers"),
        pytest.param([[[1, 2]], [[3, 4]]], "bad_features", id="three-dimensions"),
        pytest.param([], "empty_batch", id="no-rows"),
        pytest.param([[]], "empty_batch", id="empty-row"),
        pytest.param([[1.0]] * 9, "batch_too_large", id="over-max-batch"),
        pytest.param([[1.0, float("nan")]], "non_finite_feature", id="nan"),
        pytest.param([[float("-inf"), 1.0]], "non_finite_feature", id="inf"),
        pytest.param([[1e39, 1.0]], "non_finite_feature", id="overflows-float32"),
    ],
)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_positional_rows_reject_with_reason(features: list[Any], reason: str) -> None:
    with pytest.raises(Rejected) as e:
        positional_rows(features, max_batch=8)
    assert (e.value.reason, e.value.status) == (reason, 400)


def test_positional_rows_accept_exactly_max_batch() -> None:
    assert positional_rows([[1.0, 2.0]] * 8, max_batch=8).shape == (8, 2)


# -- named rows -------------------------------------------------------------------------------
def test_named_rows_put_values_in_the_models_order() -> None:
    rows: list[dict[str, Any]] = [{"c": 3, "a": 1, "b": 2}, {"b": 5.5, "c": 6, "a": 4}]
    x = named_rows(rows, NAMES, KNOWN, max_batch=8)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([[1, 2, 3], [4, 5.5, 6]], dtype=np.float32))


def test_named_rows_ignore_features_another_loaded_model_takes() -> None:
    rows = [{"a": 1, "b": 2, "c": 3, "other_arms_feature": 9}]
    np.testing.assert_array_equal(named_rows(rows, NAMES, KNOWN, max_batch=8), [[1, 2, 3]])


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        pytest.param([], "empty_batch", id="no-rows"),
        pytest.param([{"a": 1, "b": 2, "c": 3}] * 9, "batch_too_large", id="over-max-batch"),
        pytest.param([{"a": 1, "b": 2, "c": 3}, [1, 2, 3]], "bad_features", id="mixed"),
        pytest.param([{"a": 1, "b": 2}], "missing_feature", id="missing"),
        pytest.param([{"a": 1, "b": 2, "c": 3, "zz": 4}], "unknown_feature", id="unknown"),
        pytest.param([{"a": "x", "b": 2, "c": 3}], "bad_features", id="word"),
        pytest.param([{"a": None, "b": 2, "c": 3}], "bad_features", id="null"),
        pytest.param([{"a": [1, 2], "b": 2, "c": 3}], "bad_features", id="list-value"),
        pytest.param([{"a": float("nan"), "b": 2, "c": 3}], "non_finite_feature", id="nan"),
    ],
)
def test_named_rows_reject_with_reason(rows: list[Any], reason: str) -> None:
    with pytest.raises(Rejected) as e:
        named_rows(rows, NAMES, KNOWN, max_batch=8)
    assert (e.value.reason, e.value.status) == (reason, 400)


def test_named_rows_name_the_missing_and_unknown_features() -> None:
    with pytest.raises(Rejected) as missing:
        named_rows([{"a": 1, "c": 3}], NAMES, KNOWN, max_batch=8)
    assert missing.value.detail == "feature 'b' is missing"
    with pytest.raises(Rejected) as unknown:
        named_rows([{"a": 1, "b": 2, "c": 3, "zz": 4, "yy": 5}], NAMES, KNOWN, max_batch=8)
    assert unknown.value.detail == "unknown feature(s) ['yy', 'zz']"


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.zeros((3, 4), dtype=np.float32), id="zeros"),
        pytest.param(np.array([[1.0, np.nan]], dtype=np.float32), id="nan"),
        pytest.param(np.array([[np.inf], [1.0]], dtype=np.float32), id="inf"),
        pytest.param(np.array([[-np.inf, 3.0, 2.0]], dtype=np.float32), id="minus-inf"),
        pytest.param(np.finfo(np.float32).max * np.ones((2, 2), np.float32), id="largest"),
    ],
)
def test_all_finite_matches_numpy(x: np.ndarray) -> None:
    assert all_finite(x) == bool(np.isfinite(x).all())


def test_rejected_carries_reason_detail_and_status() -> None:
    e = Rejected("body_too_large", "body is over 1048576 bytes", 413)  # type: ignore[arg-type]
    assert (e.reason, e.detail, e.status, str(e)) == (
        "body_too_large",
        "body is over 1048576 bytes",
        413,
        "body is over 1048576 bytes",
    )
    assert json.loads(encode({"error": e.reason}, JSON)) == {"error": "body_too_large"}
