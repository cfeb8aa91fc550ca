"""The release train on the evaluator (guardrails/release_train.py with guardrails/evaluator.py):
queued candidates start by themselves, one after another, when no rollout runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import write_model
from test_evaluator import Rig, _rig

from guardrails.release_train import enqueue
from router.mailbox import Command
from router.registry import Registry, Status


@pytest.fixture
def train(tmp_path: Path) -> Iterator[tuple[Rig, Registry]]:
    rig = _rig(tmp_path)  # version 1 champion, 2 a candidate
    registry = Registry(rig.config.state_path)
    registry.register(write_model(tmp_path / "c.onnx", weights=[0.3] * 4))  # version 3
    yield rig, registry
    registry.close()
    rig.evaluator.close()


def test_release_train_starts_the_queued_candidate_when_idle(
    train: tuple[Rig, Registry],
) -> None:
    rig, registry = train
    assert enqueue(registry, 2) == "model 2 queued at position 1"
    rig.evaluator.tick()
    r = rig.evaluator.rollout
    assert r is not None and r.challenger == 2 and r.state == "loading"
    assert registry.get(2).status == Status.CHALLENGER
    assert registry.get(2).rollout_id == r.id


def test_release_train_next_candidate_starts_when_the_rollout_ends(
    train: tuple[Rig, Registry],
) -> None:
    rig, registry = train
    enqueue(registry, 2)
    rig.evaluator.tick()
    assert enqueue(registry, 3) == "model 3 queued at position 1"  # behind the running one
    first = rig.evaluator.rollout
    assert first is not None and first.challenger == 2
    rig.evaluator.apply(Command.ROLLBACK, {})
    rig.evaluator.tick()  # the next tick starts the queued one
    second = rig.evaluator.rollout
    assert second is not None and second.challenger == 3 and second.id != first.id
    assert (registry.get(2).status, registry.get(2).rollout_id) == (Status.FAILED, first.id)
    assert registry.get(3).status == Status.CHALLENGER and registry.queued() == []


def test_release_train_replace_never_touches_the_running_rollout(
    train: tuple[Rig, Registry], tmp_path: Path
) -> None:
    rig, registry = train
    enqueue(registry, 2)
    rig.evaluator.tick()
    enqueue(registry, 3)
    four = registry.register(write_model(tmp_path / "d.onnx", weights=[0.4] * 4)).version
    assert enqueue(registry, four, replace=True) == "model 4 queued at position 1 (replacing 3)"
    assert registry.get(2).status == Status.CHALLENGER  # still running
    assert registry.get(3).status == Status.CANDIDATE
    assert [r.version for r in registry.queued()] == [4]


def test_release_train_waits_for_a_champion_and_fails_what_cannot_start(
    train: tuple[Rig, Registry],
) -> None:
    rig, registry = train
    enqueue(registry, 2)
    enqueue(registry, 3)
    registry.set_status(1, Status.RETIRED, "gone")  # no champion: nothing can start
    rig.evaluator.tick()
    assert rig.evaluator.rollout is None
    assert [r.version for r in registry.queued()] == [2, 3]  # not the candidates' fault
    rig.evaluator.train.started(2, {"ok": False, "error": "not_a_candidate"})  # type: ignore[union-attr]
    assert registry.get(2).status == Status.FAILED
    assert "not_a_candidate" in registry.get(2).reason
    assert [r.version for r in registry.queued()] == [3]
