"""The status document: the file the evaluator hands to the workers, and what a worker
serves at /status (the evaluator's document plus its own view)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.models import write_model

from guardrails.evaluator import prepare
from router import layout
from router import status as status_file
from router.config import Config
from router.control import ControlWriter, beat_ns
from router.registry import Registry
from router.status import IDLE, Status, StatusReader, WorkerStatus
from router.worker import Worker

DOCUMENT: dict[str, Any] = {
    "phase": 2,
    "state": "running",
    "split_bp": 1000,
    "guardrails": [{"name": "error_rate", "value": 0.001, "threshold": "< 0.1%"}],
    "rollout": {"id": "r1", "phase": 2},
    "next": "advance to phase 3 (20%) when: ...",
}


def _touch(path: Path, ns: int) -> None:
    """Give the file its own modification time: two writes within one tick of the
    filesystem's clock can share one, and the reader caches by it."""
    os.utime(path, ns=(ns, ns))


# -- the file ---------------------------------------------------------------------------------
def test_status_write_then_read_returns_the_document(tmp_path: Path) -> None:
    status_file.write(tmp_path, DOCUMENT)  # type: ignore[arg-type]
    assert StatusReader(tmp_path).read() == DOCUMENT


def test_status_write_leaves_only_the_status_file(tmp_path: Path) -> None:
    status_file.write(tmp_path, DOCUMENT)  # type: ignore[arg-type]
    status_file.write(tmp_path, IDLE)
    assert [p.name for p in tmp_path.iterdir()] == [status_file.FILENAME]
    assert json.loads((tmp_path / status_file.FILENAME).read_text()) == IDLE


def test_status_write_refuses_nan_and_keeps_the_previous_document(tmp_path: Path) -> None:
    status_file.write(tmp_path, DOCUMENT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        status_file.write(tmp_path, {**DOCUMENT, "split_bp": float("nan")})  # type: ignore[typeddict-item]
    assert StatusReader(tmp_path).read() == DOCUMENT


def test_status_reader_reads_none_before_the_first_write(tmp_path: Path) -> None:
    assert StatusReader(tmp_path).read() is None


def test_status_reader_parses_again_only_when_the_file_changed(tmp_path: Path) -> None:
    reader = StatusReader(tmp_path)
    status_file.write(tmp_path, DOCUMENT)  # type: ignore[arg-type]
    _touch(tmp_path / status_file.FILENAME, 1_000_000_000)
    first = reader.read()
    assert reader.read() is first  # unchanged: the cached document, not a new parse
    status_file.write(tmp_path, IDLE)
    _touch(tmp_path / status_file.FILENAME, 2_000_000_000)
    assert reader.read() == IDLE


def test_status_reader_keeps_the_last_good_document_over_a_broken_file(tmp_path: Path) -> None:
    reader = StatusReader(tmp_path)
    status_file.write(tmp_path, DOCUMENT)  # type: ignore[arg-type]
    _touch(tmp_path / status_file.FILENAME, 1_000_000_000)
    assert reader.read() == DOCUMENT
    (tmp_path / status_file.FILENAME).write_text('{"phase": 3, "sta')  # half a document
    _touch(tmp_path / status_file.FILENAME, 2_000_000_000)
    assert reader.read() == DOCUMENT
    status_file.write(tmp_path, IDLE)  # the next whole document is read
    _touch(tmp_path / status_file.FILENAME, 3_000_000_000)
    assert reader.read() == IDLE


def test_status_idle_document_says_no_rollout() -> None:
    assert IDLE == {"phase": 0, "state": "idle", "guardrails": [], "rollout": None}


# -- what a worker serves ---------------------------------------------------------------------
class Rig:
    """A state directory with two registered models, the control block as the evaluator
    writes it, and one in-process worker."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = Config.from_dict({"serve": {"state_dir": str(tmp_path / "state")}})
        registry = Registry(self.config.state_path)
        registry.register(write_model(tmp_path / "a.onnx"))
        registry.register(write_model(tmp_path / "b.onnx", features=["f3", "x"]))
        registry.close()
        self.shm = prepare(self.config)
        self.control = ControlWriter(self.shm)
        self.control.claim(os.getpid())
        self.control.load_slot(0, 1)
        self.control.flip(0, 0, False)
        self._worker: Worker | None = None

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            self._worker = Worker(self.config)
        return self._worker

    def close(self) -> None:
        if self._worker is not None:
            self._worker.lock.release()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_worker_status_without_an_evaluator_is_idle_and_stale(rig: Rig) -> None:
    doc = rig.worker.status()
    assert {k: doc[k] for k in IDLE} == IDLE  # type: ignore[literal-required]
    assert (doc["split_bp"], doc["effective_split_bp"], doc["stale"]) == (0, 0, True)
    assert doc["models"]["challenger"] is None
    champion = doc["models"]["champion"]
    assert champion is not None
    assert (champion["version"], champion["label"]) == ("1", "tiny:1")
    assert champion["features"] == ["f0", "f1", "f2", "f3"]
    assert doc["arms"]["champion"] == {
        "requests": 0,
        "predictions": 0,
        "errors": 0,
        "fallbacks": 0,
        "impressions": 0,
        "clicks": 0,
    }
    assert doc["rejected"] == {} and doc["workers"] == 1


def test_worker_status_adds_its_view_to_the_evaluators_document(rig: Rig) -> None:
    rig.control.load_slot(1, 2)
    rig.control.flip(300, 0, True)
    rig.control.beat()
    status_file.write(rig.config.state_path, DOCUMENT)  # type: ignore[arg-type]
    doc = rig.worker.status()
    # The evaluator's fields pass through, but the split is the control word's, read now.
    assert (doc["phase"], doc["state"], doc["next"]) == (2, "running", DOCUMENT["next"])
    assert doc["guardrails"] == DOCUMENT["guardrails"] and doc["rollout"] == DOCUMENT["rollout"]
    assert (doc["split_bp"], doc["effective_split_bp"], doc["stale"]) == (300, 300, False)
    challenger = doc["models"]["challenger"]
    assert challenger is not None
    assert (challenger["version"], challenger["features"]) == ("2", ["f3", "x"])


def test_worker_status_effective_split_is_zero_while_the_heartbeat_is_stale(rig: Rig) -> None:
    rig.control.load_slot(1, 2)
    rig.control.flip(300, 0, True)
    rig.shm.control["heartbeat_ns"] = beat_ns() - 60 * 10**9  # a minute old
    doc = rig.worker.status()
    assert (doc["split_bp"], doc["effective_split_bp"], doc["stale"]) == (300, 0, True)


def test_worker_status_lists_rejects_by_reason(rig: Rig) -> None:
    worker = rig.worker
    worker.reject(layout.Reject.BAD_TOKEN)
    worker.reject(layout.Reject.BAD_TOKEN)
    worker.reject(layout.Reject.EMPTY_BATCH)
    assert worker.status()["rejected"] == {"bad_token": 2, "empty_batch": 1}


def test_worker_status_keys_are_declared_in_the_schema(rig: Rig) -> None:
    status_file.write(rig.config.state_path, DOCUMENT)  # type: ignore[arg-type]
    doc = rig.worker.status()
    declared = Status.__required_keys__ | Status.__optional_keys__
    assert set(doc) <= declared, set(doc) - declared
    assert WorkerStatus.__required_keys__ <= set(doc)
