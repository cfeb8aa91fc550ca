"""The status document: the file the evaluator hands to the workers, and what a worker
serves at /status (the evaluator's document plus its own view)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.models import write_model
from support.server import STATE_S, register_pair, serving, wait_for

from guardrails.evaluator import prepare
from router import layout
from router import status as status_file
from router.config import Config
from router.control import ControlWriter, beat_ns
from router.registry import Registry
from router.shared_memory import SharedMemory
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


class Pipe:
    """A state file with the evaluator's publisher and a worker's reader (slab 0)."""

    def __init__(self, tmp_path: Path) -> None:
        config = Config.from_dict({"serve": {"state_dir": str(tmp_path / "state")}})
        self.state = config.state_path
        self.shm = prepare(config)
        self.control = ControlWriter(self.shm)
        self.control.claim(os.getpid())
        self.control.beat()
        self.publisher = status_file.Publisher(self.state, self.shm)
        self.reader = StatusReader(self.state, self.shm, 0)

    def publish(self, doc: Any) -> bool:
        return self.publisher.publish(lambda: doc, force=True)


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipe]:
    p = Pipe(tmp_path)
    yield p
    p.shm.close()


# -- the file ---------------------------------------------------------------------------------
def test_status_publish_then_read_returns_the_document(pipe: Pipe) -> None:
    pipe.publish(DOCUMENT)
    assert pipe.reader.read() == DOCUMENT
    assert json.loads((pipe.state / status_file.FILENAME).read_text()) == DOCUMENT


def test_status_publish_writes_in_place_and_a_shorter_document_leaves_no_tail(pipe: Pipe) -> None:
    pipe.publish(DOCUMENT)
    pipe.publish(IDLE)
    assert [p.name for p in pipe.state.iterdir() if "status" in p.name] == [status_file.FILENAME]
    assert json.loads((pipe.state / status_file.FILENAME).read_text()) == IDLE


def test_status_publish_makes_nan_and_infinity_null(pipe: Pipe) -> None:
    pipe.publish({**DOCUMENT, "comparison": {"p_better": float("nan"), "uplift": float("inf")}})
    text = (pipe.state / status_file.FILENAME).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert pipe.reader.read() == {**DOCUMENT, "comparison": {"p_better": None, "uplift": None}}


def test_status_reader_reads_none_before_the_first_publish(pipe: Pipe) -> None:
    assert pipe.reader.read() is None


def test_status_reader_parses_again_only_when_a_new_document_was_published(pipe: Pipe) -> None:
    pipe.publish(DOCUMENT)
    first = pipe.reader.read()
    assert pipe.reader.read() is first  # unchanged: the cached document, not a new parse
    pipe.publish(IDLE)
    assert pipe.reader.read() == IDLE


def test_status_reader_keeps_the_last_whole_document_while_one_is_written(pipe: Pipe) -> None:
    pipe.publish(DOCUMENT)
    assert pipe.reader.read() == DOCUMENT
    # A writer between its two stamps of the seqlock (or killed there): half a document.
    seq = int(pipe.shm.control["status_seq"])
    pipe.shm.control["status_seq"] = seq + 1
    (pipe.state / status_file.FILENAME).write_text('{"phase": 3, "sta')
    assert pipe.reader.read() == DOCUMENT
    pipe.publish(IDLE)  # the next whole document is read
    assert pipe.shm.control["status_seq"] % 2 == 0
    assert pipe.reader.read() == IDLE


# -- publishing on demand ---------------------------------------------------------------------
def test_status_is_published_only_while_a_worker_wants_it(pipe: Pipe) -> None:
    publish = pipe.publisher.publish
    assert not publish(lambda: DOCUMENT)  # nobody asked: nothing built, nothing written
    assert not (pipe.state / status_file.FILENAME).exists()
    pipe.reader.want()
    assert publish(lambda: DOCUMENT)
    assert pipe.reader.read() == DOCUMENT
    lapsed = beat_ns() - int(status_file.LEASE_S * 1e9) - 1
    pipe.shm.slabs[0]["status_wanted_ns"] = lapsed  # the last reader left
    assert not publish(lambda: IDLE)
    assert pipe.reader.read() == DOCUMENT


def test_status_is_fresh_within_a_tick_and_under_the_control_word_in_force(pipe: Pipe) -> None:
    assert not pipe.reader.is_fresh()  # nothing published yet
    pipe.publish(DOCUMENT)
    assert pipe.reader.is_fresh()
    pipe.control.flip(300, 0, True)  # e.g. a rollback: the document predates it
    assert not pipe.reader.is_fresh()
    pipe.publish(IDLE)
    assert pipe.reader.is_fresh()
    old = beat_ns() - int(status_file.TICK_S * 1e9) - 1
    pipe.shm.control["status_ns"] = old
    assert not pipe.reader.is_fresh()
    # No evaluator beating: nothing fresher will come, so the last document is fresh enough.
    pipe.shm.control["heartbeat_ns"] = beat_ns() - 60 * 10**9
    assert pipe.reader.is_fresh()


def test_status_reader_fresh_waits_for_the_next_publication(pipe: Pipe) -> None:
    pipe.publish(DOCUMENT)
    pipe.control.flip(300, 0, True)

    async def scenario() -> Any:
        waiting = asyncio.create_task(pipe.reader.fresh(timeout_s=60.0))
        await asyncio.sleep(10 * status_file.POLL_S)
        assert not waiting.done()  # the document on file predates the flip
        assert pipe.shm.slabs[0]["status_wanted_ns"] > 0  # and the evaluator was asked
        pipe.publish(IDLE)
        return await asyncio.wait_for(waiting, 30.0)

    assert asyncio.run(scenario()) == IDLE


def test_status_idle_document_says_no_rollout() -> None:
    assert IDLE == {
        "phase": 0,
        "phase_name": "none",
        "state": "idle",
        "guardrails": [],
        "rollout": None,
    }


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

    def publish(self, doc: Any) -> None:
        """What the evaluator does when a worker wants the status."""
        status_file.Publisher(self.config.state_path, self.shm).publish(lambda: doc, force=True)

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
    rig.publish(DOCUMENT)
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
    rig.publish(DOCUMENT)
    doc = rig.worker.status()
    declared = Status.__required_keys__ | Status.__optional_keys__
    assert set(doc) <= declared, set(doc) - declared
    assert WorkerStatus.__required_keys__ <= set(doc)


# -- end to end -------------------------------------------------------------------------------
def test_status_get_after_a_quiet_spell_shows_the_change_made_meanwhile(tmp_path: Path) -> None:
    """Nobody has read /status for a while, so the evaluator has stopped writing it; a
    rollout starts; the next GET shows the rollout (it waits for the next tick's document
    instead of answering the one on file)."""
    state = register_pair(tmp_path / "state")
    with serving(state) as server:
        shm = SharedMemory.attach(state)
        try:

            def next_tick() -> None:
                beat = int(shm.control["heartbeat_ns"])
                wait_for(lambda: int(shm.control["heartbeat_ns"]) > beat, STATE_S, "a tick")

            def lapse() -> None:
                shm.slabs["status_wanted_ns"] = 0  # every reader gone: the lease lapses
                next_tick()  # (one may have been deciding to publish as it went)
                seq = int(shm.control["status_seq"])
                next_tick()
                assert int(shm.control["status_seq"]) == seq  # it ticks, and publishes nothing

            lapse()
            assert server.status()["state"] == "idle"  # the first read after a quiet spell
            lapse()
            r = server.admin("start", {"version": "2"})
            assert r.status_code == 200, r.text
            status = server.status()
            assert status["state"] in ("loading", "running"), status["state"]
            assert status["rollout"] is not None and status["rollout"]["challenger"] == "2"
        finally:
            shm.close()
