"""The release train in fleet mode, end to end: real `rampart serve --fleet` hosts, a real
redis-server as the fleet store and, for MLflow as the fleet's registry, a real MLflow store
(sqlite + artifact directory). Candidates are queued, never started by an admin command;
each test waits for the state it needs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from support.fleet import FLEET, STATE_S, Fleet
from support.mlflow_store import Store
from support.models import write_model
from support.redis_server import needs_redis
from support.server import Status, rampart, split_in_force
from support.server import wait_for as wait

pytestmark = needs_redis


def _running(version: int) -> Callable[[Status], bool]:
    def check(s: Status) -> bool:
        return str((s.get("rollout") or {}).get("challenger")) == str(version) and split_in_force(s)

    return check


def _list(fleet: Fleet) -> dict[str, str]:
    out = rampart("models", "list", "--fleet", fleet.url, "--fleet-name", FLEET)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line for line in out.stdout.splitlines()}


def test_fleet_train_queued_candidates_start_by_themselves(fleet: Fleet) -> None:
    assert fleet.register(write_model(fleet.tmp / "champion.onnx")) == ["1"]
    for h in ("a", "b"):
        fleet.start(h)
    for name, weight in (("a", 0.2), ("b", 0.3)):
        model = write_model(fleet.tmp / f"{name}.onnx", weights=[weight] * 4)
        out = rampart("models", "register", str(model), "--start", "--fleet", fleet.url,
                      "--fleet-name", FLEET)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "queued at position" in out.stderr
    fleet.wait_all(_running(2), "candidate 2 started by the leader on its own")
    assert "queued     position 1" in _list(fleet)["3"]
    r = fleet.hosts["b"].admin("rollback")
    assert r.status_code == 200, r.text
    fleet.wait_all(_running(3), "queued candidate 3 started when 2 ended")
    listing = _list(fleet)
    assert "failed" in listing["2"] and "manual rollback" in listing["2"]
    assert "challenger" in listing["3"]


def test_fleet_train_on_mlflow_the_leader_writes_each_outcome_through_a_failover(
    fleet: Fleet, template_store: Path
) -> None:
    (fleet.tmp / "mlflow").mkdir()
    store = Store(fleet.tmp / "mlflow", template_store)
    store.log(write_model(fleet.tmp / "champion.onnx"), "champion")
    for h in ("a", "b", "c"):
        fleet.start(h, store.registry_config())
    fleet.wait_all(lambda s: s["models"]["champion"]["version"] == "1", "@champion served")
    a = store.log(write_model(fleet.tmp / "a.onnx", weights=[0.2] * 4), "challenger")
    fleet.wait_all(_running(a), "@challenger started by the leader on its own")
    b = store.log(write_model(fleet.tmp / "b.onnx", weights=[0.3] * 4), "challenger")
    wait(lambda: "queued" in _list(fleet).get(str(b), ""), STATE_S, f"{b} queued in the fleet")
    leader = fleet.leader()
    r = fleet.hosts[leader].admin("rollback")
    assert r.status_code == 200, r.text
    fleet.wait_all(_running(b), "the queued candidate started when the first ended")
    tags_a = wait(
        lambda: (t := store.tags(a)).get("rampart.status") == "failed" and t, STATE_S, "A failed"
    )
    assert tags_a["rampart.reason"] == "manual rollback"
    rollout_a = tags_a["rampart.rollout_id"]
    # The leader dies while B runs; the next one goes on with B and promotes it.
    os.killpg(fleet.hosts[leader].proc.pid, signal.SIGKILL)
    fleet.hosts[leader].proc.wait()
    new = fleet.leader(other_than=leader)
    r = fleet.hosts[new].admin("promote")
    assert r.status_code == 200, r.text
    rollout_b = r.json()["rollout"]
    fleet.wait_all(
        lambda s: s["models"]["champion"]["version"] == str(b) and not s["rollout"],
        "B the champion on every host",
    )
    wait(lambda: store.aliases() == {"champion": b}, STATE_S, "@champion on B, @challenger gone")
    tags_b = wait(
        lambda: (t := store.tags(b)).get("rampart.status") == "promoted" and t, STATE_S, "B"
    )
    assert tags_b["rampart.rollout_id"] == rollout_b != rollout_a
    assert store.tags(a)["rampart.rollout_id"] == rollout_a  # A's outcome stays as written
    assert "rampart.retired" in store.tags(1)
