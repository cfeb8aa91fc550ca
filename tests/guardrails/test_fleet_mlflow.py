"""MLflow as a fleet's registry (guardrails/fleet_mlflow.py): the leader's link between a real
MLflow store (sqlite + artifact directory, tests/support/mlflow_store.py) and a real
redis-server as the fleet store. The link is driven by hand here (`poll`, `reconcile`); its
thread and real hosts are in test_fleet_train.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mlflow_store import Store
from support.models import write_corrupt, write_model
from support.redis_server import RedisServer, needs_redis, running_redis

from guardrails.fleet_leader import FleetRegistry
from guardrails.fleet_mlflow import FleetMlflow, leader_registry
from guardrails.fleet_store import FleetStore
from router.config import Config
from router.registry import Status

pytestmark = needs_redis


@pytest.fixture
def store(tmp_path: Path, template_store: Path) -> Store:
    return Store(tmp_path, template_store)


@pytest.fixture
def fleet_store(tmp_path: Path) -> Iterator[FleetStore]:
    server: RedisServer
    with running_redis(tmp_path / "redis") as server, FleetStore(server.url, "t") as s:
        yield s


def _config(store: Store, tmp_path: Path, host: str = "a") -> Config:
    registry = {"backend": "mlflow", "tracking_uri": store.uri, "model_name": "ctr"}
    return Config.from_dict({"serve": {"state_dir": str(tmp_path / host)}, "registry": registry})


def _lead(fleet_store: FleetStore, host: str) -> int:
    """Make `host` the leader (the one before resigns): its fencing epoch."""
    holder = fleet_store.leader()
    if holder is not None:
        fleet_store.resign(holder[0])
    lease = fleet_store.acquire_or_renew(host, 10_000)
    assert lease is not None
    return lease.epoch


@pytest.fixture
def link(store: Store, fleet_store: FleetStore, tmp_path: Path) -> Iterator[FleetMlflow]:
    epoch = _lead(fleet_store, "a")
    registry = leader_registry(_config(store, tmp_path), fleet_store, epoch)
    assert isinstance(registry.watcher, FleetMlflow)
    yield registry.watcher
    registry.close()


def test_fleet_mlflow_new_leader_takes_the_champion_verified(
    store: Store, fleet_store: FleetStore, tmp_path: Path
) -> None:
    path = write_model(tmp_path / "a.onnx")
    store.log(path, "champion")
    epoch = _lead(fleet_store, "a")
    registry = leader_registry(_config(store, tmp_path), fleet_store, epoch)
    registry.close()
    (champion,) = registry.with_status(Status.CHAMPION)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (champion.version, champion.sha256) == (1, sha)
    assert fleet_store.model_bytes(sha) == path.read_bytes()  # every host fetches it from here
    assert store.tags(1)["rampart.sha256"] == sha


def test_fleet_mlflow_poll_queues_in_mlflow_order_and_fails_a_broken_artifact(
    store: Store, link: FleetMlflow, fleet_store: FleetStore, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    link.bootstrap()
    first = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    assert link.poll(link.mlflow.client) == [first]
    broken = store.log(write_corrupt(tmp_path / "bad.onnx"), "challenger")
    assert link.poll(link.mlflow.client) == []
    second = store.log(write_model(tmp_path / "c.onnx", weights=[0.3] * 4), "challenger")
    assert link.poll(link.mlflow.client) == [second]
    assert link.poll(link.mlflow.client) == []  # nothing new
    assert [m["version"] for m in fleet_store.queued_models()] == [first, second]
    assert store.tags(broken)["rampart.status"] == "failed"
    assert "verification" in store.tags(broken)["rampart.reason"]
    with pytest.raises(KeyError):
        fleet_store.get_model(broken)  # never reaches the fleet


def test_fleet_mlflow_outcomes_are_written_once_and_finished_by_the_next_leader(
    store: Store, link: FleetMlflow, fleet_store: FleetStore, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    link.bootstrap()
    a = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    link.poll(link.mlflow.client)
    # The leader rolls A back in its tick, and dies before its thread writes MLflow.
    fleet = FleetRegistry(fleet_store, link.epoch)
    fleet.set_status(a, Status.CHALLENGER, "rollout started", "r-1")
    fleet.set_status(a, Status.FAILED, "prediction_spread 0 (threshold >= 0.25)", "r-1")
    link.stop()
    assert store.tags(a)["rampart.status"] == "queued"
    # The next leader finds A's outcome missing in MLflow and writes it, once.
    epoch = _lead(fleet_store, "b")
    successor = leader_registry(_config(store, tmp_path, "b"), fleet_store, epoch)
    assert isinstance(successor.watcher, FleetMlflow)
    nxt = successor.watcher
    try:
        assert nxt.reconcile(nxt.mlflow.client) > 0
        assert nxt.reconcile(nxt.mlflow.client) == 0  # in line: nothing written again
        tags = store.tags(a)
        assert (tags["rampart.status"], tags["rampart.rollout_id"]) == ("failed", "r-1")
        assert tags["rampart.reason"] == "prediction_spread 0 (threshold >= 0.25)"
        assert "challenger" not in store.aliases()
        # B is promoted: @champion moves, the former champion is retired, @challenger goes.
        b = store.log(write_model(tmp_path / "c.onnx", weights=[0.3] * 4), "challenger")
        assert nxt.poll(nxt.mlflow.client) == [b]
        successor.set_status(b, Status.CHALLENGER, "rollout started", "r-2")
        assert fleet_store.set_model_statuses(
            epoch, {b: ("champion", "promoted"), 1: ("retired", f"replaced by {b}")}, "r-2"
        )
        assert nxt.reconcile(nxt.mlflow.client) > 0
        assert nxt.reconcile(nxt.mlflow.client) == 0
    finally:
        successor.close()
    assert store.aliases() == {"champion": b}
    assert (store.tags(b)["rampart.status"], store.tags(b)["rampart.rollout_id"]) == (
        "promoted",
        "r-2",
    )
    assert store.tags(1)["rampart.retired"] == f"replaced by {b}"


def test_fleet_mlflow_unqueues_what_mlflow_no_longer_queues(
    store: Store, link: FleetMlflow, fleet_store: FleetStore, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    link.bootstrap()
    b = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    link.poll(link.mlflow.client)
    # `models register C --start --replace` elsewhere: MLflow's tags only.
    c = link.mlflow.register(write_model(tmp_path / "c.onnx", weights=[0.3] * 4), start=True,
                             replace=True)  # fmt: skip
    assert link.poll(link.mlflow.client) == [c]
    assert [m["version"] for m in fleet_store.queued_models()] == [c]
    assert fleet_store.get_model(b)["status"] == Status.CANDIDATE.value


def test_fleet_mlflow_never_takes_a_fleet_model_of_the_same_number_for_mlflows(
    store: Store, link: FleetMlflow, fleet_store: FleetStore, tmp_path: Path
) -> None:
    store.log(write_model(tmp_path / "a.onnx"), "champion")
    link.bootstrap()
    # Version 2 registered in the fleet store itself, then MLflow's own version 2 queued.
    other = write_model(tmp_path / "other.onnx", weights=[0.9] * 4)
    fleet_store.put_model({"name": "other", "features": ["f0", "f1", "f2", "f3"]},
                          other.read_bytes())  # fmt: skip
    mine = store.log(write_model(tmp_path / "b.onnx", weights=[0.2] * 4), "challenger")
    assert mine == 2
    assert link.poll(link.mlflow.client) == []
    assert fleet_store.queued_models() == []
    assert store.tags(mine)["rampart.status"] == "failed"
    assert "another model" in store.tags(mine)["rampart.reason"]
