"""The local model registry: a directory of validated ONNX files and a SQLite table."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support.models import write_corrupt, write_model

from router.models import ModelError
from router.registry import Registry, Status


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "state")
    yield r
    r.close()


def test_registry_register_numbers_versions_from_one(registry: Registry, tmp_path: Path) -> None:
    records = [registry.register(write_model(tmp_path / f"{i}.onnx")) for i in range(3)]
    assert [r.version for r in records] == [1, 2, 3]
    assert [r.version for r in registry.all()] == [1, 2, 3]


def test_registry_register_copies_the_file_and_records_what_it_holds(
    registry: Registry, tmp_path: Path
) -> None:
    source = write_model(tmp_path / "m.onnx", features=["ctr_7d", "age"], name="ctr-mlp")
    record = registry.register(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert record.name == "ctr-mlp" and record.label == "ctr-mlp:1"
    assert record.features == ("ctr_7d", "age")
    assert record.sha256 == digest
    assert record.file == f"1-{digest[:12]}.onnx"
    copy = registry.path_of(record)
    assert copy.parent == registry.dir and copy.read_bytes() == source.read_bytes()
    source.unlink()  # the registry serves its own copy
    assert registry.load(1).features == ("ctr_7d", "age")


def test_registry_first_model_is_champion_later_ones_candidates(
    registry: Registry, tmp_path: Path
) -> None:
    first = registry.register(write_model(tmp_path / "a.onnx"))
    second = registry.register(write_model(tmp_path / "b.onnx"))
    third = registry.register(write_model(tmp_path / "c.onnx"))
    assert first.status == Status.CHAMPION
    assert second.status == third.status == Status.CANDIDATE


def test_registry_without_feature_metadata_names_features_by_position(
    registry: Registry, tmp_path: Path
) -> None:
    record = registry.register(write_model(tmp_path / "m.onnx", features=3, feature_metadata=False))
    assert record.features == ("f0", "f1", "f2")


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.onnx"
    if kind in ("garbage", "truncated", "empty"):
        return write_corrupt(path, mode=kind)
    if kind == "missing":
        return path
    metadata = {
        "features-not-json": {"features": "not json"},
        "features-not-strings": {"features": json.dumps([1, 2, 3, 4])},
        "features-repeated": {"features": json.dumps(["a", "a", "b", "c"])},
        "features-miscounted": {"features": json.dumps(["a", "b"])},
    }
    if kind in metadata:
        return write_model(path, metadata=metadata[kind])
    return write_model(path, kind=kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param("missing", "model file does not exist", id="missing"),
        pytest.param("garbage", "not a loadable ONNX model", id="garbage"),
        pytest.param("truncated", "not a loadable ONNX model", id="truncated"),
        pytest.param("empty", "not a loadable ONNX model", id="empty"),
        pytest.param("two_inputs", "expected one input, found 2", id="two-inputs"),
        pytest.param("wrong_input_type", "expected tensor(float)", id="int-input"),
        pytest.param("wrong_output_shape", "output shape [8, 3]", id="three-outputs"),
        pytest.param("raise_on_batch", "the probe batch raised", id="raises-on-probe"),
        pytest.param("nan", "probe predictions are not all finite", id="nan"),
        pytest.param("out_of_range", "probe predictions are not all finite", id="above-one"),
        pytest.param("features-not-json", "'features' is not JSON", id="features-not-json"),
        pytest.param(
            "features-not-strings", "must be a JSON list of strings", id="features-not-strings"
        ),
        pytest.param("features-repeated", "names a feature twice", id="features-repeated"),
        pytest.param(
            "features-miscounted", "lists 2 features but the input takes 4", id="features-count"
        ),
    ],
)
def test_registry_refuses_incompatible_models_naming_the_file(
    registry: Registry, tmp_path: Path, kind: str, message: str
) -> None:
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ModelError) as refused:
        registry.register(path)
    assert str(refused.value).startswith(str(path.resolve()))
    assert message in str(refused.value)
    assert registry.all() == []  # nothing recorded
    assert list(registry.dir.iterdir()) == []  # nothing copied


def test_registry_refusal_leaves_the_next_version_number_free(
    registry: Registry, tmp_path: Path
) -> None:
    with pytest.raises(ModelError):
        registry.register(write_model(tmp_path / "nan.onnx", kind="nan"))
    assert registry.register(write_model(tmp_path / "ok.onnx")).version == 1


def test_registry_set_status_changes_status_and_reason(registry: Registry, tmp_path: Path) -> None:
    registry.register(write_model(tmp_path / "a.onnx"))
    registry.register(write_model(tmp_path / "b.onnx"))
    registry.set_status(2, Status.FAILED, "error_rate 0.4% (threshold < 0.1%)")
    failed = registry.get(2)
    assert failed.status == Status.FAILED and failed.reason == "error_rate 0.4% (threshold < 0.1%)"
    registry.set_status(1, Status.RETIRED)
    registry.set_status(2, Status.CHAMPION)
    assert registry.get(2).reason == ""  # a new status clears the old reason
    assert [r.version for r in registry.with_status(Status.CHAMPION)] == [2]
    assert [r.version for r in registry.with_status(Status.RETIRED)] == [1]
    assert registry.with_status(Status.FAILED) == []


def test_registry_get_unknown_version_raises_key_error(registry: Registry) -> None:
    with pytest.raises(KeyError, match="no model version 7"):
        registry.get(7)


@pytest.mark.parametrize(
    "file",
    [
        pytest.param("../escape.onnx", id="parent"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("sub/inner.onnx", id="subdirectory"),
    ],
)
def test_registry_path_of_refuses_files_outside_its_directory(
    registry: Registry, tmp_path: Path, file: str
) -> None:
    record = registry.register(write_model(tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="outside the registry directory"):
        registry.path_of(replace(record, file=file))


def test_registry_reopened_keeps_records_and_loads_models(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Registry(state)
    first.register(write_model(tmp_path / "a.onnx"))
    first.register(write_model(tmp_path / "b.onnx", features=["x", "y"]))
    first.set_status(2, Status.FAILED, "worse")
    first.close()
    again = Registry(state)
    try:
        assert [(r.version, r.status, r.reason) for r in again.all()] == [
            (1, Status.CHAMPION, ""),
            (2, Status.FAILED, "worse"),
        ]
        model = again.load(2)
        assert model.version == 2 and model.label == "tiny:2"
        assert model.features == ("x", "y")
    finally:
        again.close()


# --- the queue ------------------------------------------------------------------------------------


def _four(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "state")
    for i in range(4):  # 1 champion, 2..4 candidates
        registry.register(write_model(tmp_path / f"m{i}.onnx", weights=[0.1 * (i + 1)] * 4))
    return registry


def test_registry_queue_keeps_the_order_queued(tmp_path: Path) -> None:
    registry = _four(tmp_path)
    assert registry.queue(4) == [] and registry.queue(2) == []
    assert [r.version for r in registry.queued()] == [4, 2]
    assert registry.get(4).status == Status.QUEUED
    registry.set_status(4, Status.CHALLENGER, "rollout started", "r-1")
    registry.queue(3)
    assert [r.version for r in registry.queued()] == [2, 3]


def test_registry_queue_replace_takes_the_place_of_the_queued(tmp_path: Path) -> None:
    registry = _four(tmp_path)
    registry.queue(2)
    registry.queue(3)
    assert registry.queue(4, replace=True) == [2, 3]
    assert [r.version for r in registry.queued()] == [4]
    assert registry.get(2).status == Status.CANDIDATE
    assert registry.get(2).reason == "replaced in the queue by 4"


@pytest.mark.parametrize(
    "status",
    [pytest.param(Status.CHALLENGER, id="running"), pytest.param(Status.FAILED, id="failed")],
)
def test_registry_queue_refuses_what_is_not_a_candidate(tmp_path: Path, status: Status) -> None:
    registry = _four(tmp_path)
    registry.set_status(2, status)
    with pytest.raises(ValueError, match="only a candidate can be queued"):
        registry.queue(2)
    with pytest.raises(ValueError, match="only a candidate"):
        registry.queue(1)  # the champion


def test_registry_opens_a_registry_made_before_the_queue(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "registry.db")
    old.executescript(
        "CREATE TABLE models (version INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,"
        " file TEXT NOT NULL, sha256 TEXT NOT NULL, features TEXT NOT NULL, status TEXT NOT NULL,"
        " reason TEXT NOT NULL DEFAULT '', registered_at REAL NOT NULL, updated_at REAL NOT NULL);"
        " INSERT INTO models (name, file, sha256, features, status, registered_at, updated_at)"
        " VALUES ('m', '1-x.onnx', 'x', '[\"f0\"]', 'champion', 1.0, 1.0);"
    )
    old.commit()
    old.close()
    registry = Registry(state)
    assert registry.get(1).status == Status.CHAMPION
    assert (registry.get(1).rollout_id, registry.get(1).queue_seq) == ("", 0)
