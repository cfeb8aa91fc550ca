"""The MLflow registry backend (router/mlflow_registry.py) against a real MLflow store: a
sqlite:/// tracking and registry database with a local artifact directory, used directly by
MlflowClient (no server process; tests/support/mlflow_store.py)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mlflow_store import NAME, Store
from support.models import write_corrupt, write_model
from support.traffic import Traffic

from guardrails import evaluator as evaluator_mod
from guardrails.alerts import Alerter
from guardrails.evaluator import Evaluator
from router.config import Config
from router.mailbox import Command
from router.mlflow_registry import MlflowRegistry, remote_writes
from router.models import ModelError
from router.registry import Registry, Status

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")


@pytest.fixture
def store(tmp_path: Path, template_store: Path) -> Store:
    return Store(tmp_path, template_store)


@pytest.fixture
def opened(store: Store, tmp_path: Path) -> Iterator[Any]:
    registries: list[MlflowRegistry] = []

    def open_it(**kwargs: Any) -> MlflowRegistry:
        registries.append(MlflowRegistry(store.config(**kwargs), tmp_path / "state"))
        return registries[-1]

    yield open_it
    for r in registries:
        r.close()


def test_mlflow_registry_copies_the_champion_verified(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    path = write_model(tmp_path / "a.onnx")
    store.log(path, "champion")
    store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4))
    registry = opened()
    (champion,) = registry.with_status(Status.CHAMPION)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (champion.version, champion.sha256) == (1, sha)
    # Workers read the local registry: the copy is there, under MLflow's version number.
    local = Registry(tmp_path / "state")
    assert local.load(1).features == champion.features
    assert local.path_of(local.get(1)).read_bytes() == path.read_bytes()
    local.close()
    assert store.tags(1)["rampart.sha256"] == sha  # pinned on first download


def test_mlflow_registry_refuses_bytes_that_fail_the_pinned_sha256(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    version = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4))
    store.client.set_model_version_tag(NAME, str(version), "rampart.sha256", "0" * 64)
    registry = opened()
    with pytest.raises(ModelError, match="not the pinned"):
        registry.get(version)


def test_mlflow_registry_refuses_an_artifact_that_is_no_model(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    version = store.log(write_corrupt(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError):
        opened().get(version)


def test_mlflow_registry_outcomes_move_aliases_and_tag_versions(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    bad = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    good = store.log(write_model(tmp_path / "c.onnx", weights=[0.3] * 4))
    registry = opened()
    registry.get(bad)
    registry.set_status(bad, Status.CHALLENGER, "rollout started", "r-1")
    registry.set_status(bad, Status.FAILED, "ab_worse: upper bound -0.001 < 0", "r-1")
    assert {k: v for k, v in store.tags(bad).items() if k != "rampart.sha256"} == {
        "rampart.status": "failed",
        "rampart.reason": "ab_worse: upper bound -0.001 < 0",
        "rampart.rollout_id": "r-1",
    }
    assert "challenger" not in store.aliases()
    registry.get(good)
    store.client.set_registered_model_alias(NAME, "challenger", str(good))
    registry.set_status(good, Status.CHAMPION, "promoted", "r-2")
    registry.set_status(1, Status.RETIRED, f"replaced by {good}", "r-2")
    assert store.aliases() == {"champion": good}
    assert store.tags(good)["rampart.status"] == "promoted"
    assert store.tags(good)["rampart.rollout_id"] == "r-2"
    assert store.tags(1)["rampart.retired"] == f"replaced by {good}"


def test_mlflow_registry_poll_queues_each_version_given_the_challenger_alias(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    registry = opened()
    first = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    assert registry.poll() == [first]
    second = store.log(write_model(tmp_path / "c.onnx", weights=[0.3] * 4), "challenger")
    assert registry.poll() == [second]
    assert registry.poll() == []  # nothing new
    assert [r.version for r in registry.queued()] == [first, second]
    assert store.tags(first)["rampart.status"] == "queued"


def test_mlflow_registry_poll_fails_a_broken_challenger_instead_of_queueing_it(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    registry = opened()
    broken = store.log(write_corrupt(tmp_path / "bad.onnx"), "challenger")
    assert registry.poll() == []
    assert store.tags(broken)["rampart.status"] == "failed"
    assert "verification" in store.tags(broken)["rampart.reason"]


def test_mlflow_registry_poll_follows_a_replace_made_elsewhere(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    # The server queued B; `models register C --start --replace` on another machine (MLflow
    # tags only) takes B's place: the server's next poll unqueues B and queues C.
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    server = opened()
    b = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    assert server.poll() == [b]
    elsewhere = MlflowRegistry(store.config(), tmp_path / "elsewhere", sync=False)
    c = elsewhere.register(
        write_model(tmp_path / "c.onnx", weights=[0.3] * 4), start=True, replace=True
    )
    elsewhere.close()
    assert server.poll() == [c]
    assert [r.version for r in server.queued()] == [c]
    assert server.get(b).status == Status.CANDIDATE


def test_mlflow_registry_register_first_is_champion_then_start_queues(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    registry = opened()
    assert registry.register(write_model(tmp_path / "a.onnx")) == 1
    two = registry.register(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), start=True)
    three = registry.register(write_model(tmp_path / "c.onnx", weights=[0.3] * 4), start=True)
    four = registry.register(
        write_model(tmp_path / "d.onnx", weights=[0.4] * 4), start=True, replace=True
    )
    assert store.aliases() == {"champion": 1, "challenger": four}
    assert store.tags(two)["rampart.status"] == "candidate"
    assert store.tags(three)["rampart.reason"] == f"replaced in the queue by {four}"
    assert registry.poll() == [four]
    assert [r.version for r in registry.queued()] == [four]


def test_mlflow_release_train_on_the_evaluator_records_both_outcomes(
    store: Store, tmp_path: Path
) -> None:
    # The evaluator on the MLflow backend: candidate A gets @challenger, starts by itself and
    # is rolled back; B, given @challenger while A runs, waits in the queue, starts by itself
    # when A ends, and is promoted. MLflow holds both outcomes.
    store.log(write_model(tmp_path / "champion.onnx"), "champion")
    registry = {"backend": "mlflow", "tracking_uri": store.uri, "model_name": NAME, "poll_s": 0.1}
    config = Config.from_dict(
        {"serve": {"state_dir": str(tmp_path / "state")}, "registry": registry}
    )
    shm = evaluator_mod.prepare(config)
    ev = Evaluator(config, shm, alerter=Alerter(None, None))
    traffic = Traffic(shm, config)

    def tick_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60.0
        while not done():
            assert time.monotonic() < deadline, "the evaluator never got there"
            traffic.sync()  # the worker loads what the control block names
            ev.tick()
            time.sleep(0.05)  # the registry's thread polls @challenger every 0.1 s

    def running(version: int) -> Callable[[], bool]:
        return lambda: (
            ev.rollout is not None
            and (ev.rollout.challenger, ev.rollout.state)
            == (
                version,
                "running",
            )
        )

    try:
        a = store.log(write_model(tmp_path / "a.onnx", weights=[0.2] * 4), "challenger")
        tick_until(running(a))
        first = ev.rollout
        b = store.log(write_model(tmp_path / "b.onnx", weights=[0.3] * 4), "challenger")
        tick_until(lambda: [r.version for r in ev.train.registry.queued()] == [b])  # type: ignore[union-attr]
        assert ev.rollout is first  # queued behind the running one
        ev.apply(Command.ROLLBACK, {})
        tick_until(running(b))
        second = ev.rollout
        ev.apply(Command.PROMOTE, {})
    finally:
        ev.close()  # the registry's thread writes what it holds before it stops
    assert first is not None and second is not None
    assert (first.outcome, second.outcome) == ("rolled_back", "promoted")
    assert store.tags(a)["rampart.status"] == "failed"
    assert store.tags(a)["rampart.rollout_id"] == first.id
    assert store.tags(b)["rampart.status"] == "promoted"
    assert store.tags(b)["rampart.rollout_id"] == second.id
    assert store.aliases() == {"champion": b}


def test_mlflow_models_cli_registers_queues_and_lists(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rampart.cli import main

    flags = ["--registry-backend", "mlflow", "--tracking-uri", store.uri, "--model-name", NAME]
    flags += ["--state-dir", str(tmp_path / "state")]
    for i, extra in enumerate(([], ["--start"])):
        model = write_model(tmp_path / f"m{i}.onnx", weights=[0.1 * (i + 1)] * 4)
        assert main(["models", "register", str(model), *flags, *extra]) == 0
    assert capsys.readouterr().out.split() == ["1", "2"]
    assert main(["models", "list", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "@champion" in lines[0] and "champion" in lines[0].split()[2:]
    assert "@challenger" in lines[1] and "queued     position 1" in lines[1]


class _RacedOnce:
    """A real MLflow client whose first tag write loses the race MLflow's SQL store has:
    another process inserted the same new tag between this write's read and its insert.
    That moment cannot be made to happen on demand, so the first call raises what MLflow
    raises then (seen in a busy-machine run of the train scenario); the rest go through."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.raced = False

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        if not self.raced:
            self.raced = True
            self.client.set_model_version_tag(name, version, key, "the other writer's")
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: model_version_tags.workspace,"
                " model_version_tags.key, model_version_tags.name, model_version_tags.version",
                error_code="BAD_REQUEST",
            )
        self.client.set_model_version_tag(name, version, key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_mlflow_registry_tag_write_that_loses_the_insert_race_is_retried(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    two = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4))
    registry = opened()
    raced = _RacedOnce(registry.client)
    registry.write(raced, two, [("tag", ("rampart.reason", "mine"))])
    assert raced.raced and store.tags(two)["rampart.reason"] == "mine"  # last writer wins


def test_mlflow_registry_a_version_seen_queued_before_its_queue_time_is_not_put_first(
    store: Store, opened: Any, tmp_path: Path
) -> None:
    """A poll can read a version between two of its tag writes. Seen "queued" with no
    `rampart.queued_at` yet, the second candidate once sorted first (at time 0) and the
    train started it before the first."""
    registry = opened()
    registry.register(write_model(tmp_path / "a.onnx"))
    first = registry.register(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), start=True)
    second = store.log(write_model(tmp_path / "c.onnx", weights=[0.3] * 4))
    registry.client.set_model_version_tag(NAME, str(second), "rampart.status", "queued")
    assert registry.waiting(registry.client) == [first, second]
    # And what `models register --start` writes puts the queue time before the status.
    keys = [arg[0] for kind, arg in remote_writes(second, Status.QUEUED, "", "") if kind == "tag"]
    assert keys.index("rampart.queued_at") < keys.index("rampart.status")
