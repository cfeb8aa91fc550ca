"""Fleet mode end to end: several real `rampart serve --fleet` hosts on loopback and a real
`redis-server` as the fleet store. Every test waits for the state it needs."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import httpx
import pytest
from support.fleet import FLEET, STATE_S, Fleet
from support.models import LARGE_VALUE, write_model
from support.redis_server import needs_redis
from support.server import Server, rampart, split_in_force, stop_server
from support.server import wait_for as wait

pytestmark = needs_redis

ROW = [0.1, 0.2, 0.3, 0.4]
LARGE_ROW = [LARGE_VALUE * 2, 0.2, 0.3, 0.4]  # a nan_on_large challenger answers NaN


def _models(fleet: Fleet, kind: str = "linear") -> None:
    champion = write_model(fleet.tmp / "champion.onnx")
    challenger = write_model(fleet.tmp / "challenger.onnx", kind=kind, weights=[0.2] * 4)
    assert fleet.register(champion, challenger) == ["1", "2"]


def _predict(client: httpx.Client, server: Server, row: list[float]) -> dict[str, Any]:
    r = client.post(
        f"{server.url}/predict", json={"request_id": uuid.uuid4().hex, "features": [row]}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _start_rollout(fleet: Fleet, via: str) -> str:
    r = fleet.hosts[via].admin("start", {"version": "2"})
    assert r.status_code == 200, r.text
    fleet.wait_all(split_in_force, "the 3% split")
    return str(r.json()["rollout"])


def _ticks_after(fleet: Fleet, host: str, n: int = 2) -> None:
    """Wait until the leader's status has been rebuilt `n` times (it sums every host's
    evidence as published at its tick)."""
    first = fleet.status(host)["evaluator"]["updated"]

    def later() -> bool:
        return bool(fleet.status(host)["evaluator"]["updated"] >= first + n - 0.5)

    wait(later, STATE_S, f"{n} leader ticks")


def test_fleet_rollout_started_on_one_host_runs_on_all(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b", "c"):
        fleet.start(h)
    leader = fleet.leader()
    via = next(h for h in fleet.hosts if h != leader)  # any host, not only the leader
    rollout = _start_rollout(fleet, via)
    for h in fleet.hosts:
        status = fleet.status(h)
        assert status["rollout"]["id"] == rollout
        assert status["phase"] == 1
        assert status["effective_split_bp"] == status["split_bp"] == 300
        assert status["models"]["challenger"]["version"] == "2"
        assert {x["id"] for x in status["fleet"]["hosts"]} >= {"a", "b", "c"}
    for h, server in fleet.hosts.items():  # /metrics and `rampart status` show the fleet too
        assert server.metric("rampart_fleet_store_up") == 1
        assert server.metric("rampart_fleet_leader") == (1 if h == leader else 0)
        assert server.metric("rampart_fleet_hosts") == 3
    text = rampart("status", "--url", fleet.hosts[via].url).stdout
    assert f"fleet {FLEET}: 3 hosts, leader {leader}, answered by {via}" in text


def test_fleet_events_posted_to_another_host_count_once(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b"):
        fleet.start(h)
    leader = fleet.leader()
    _start_rollout(fleet, "a")
    n = 200
    with httpx.Client(timeout=10) as client:
        answers = [_predict(client, fleet.hosts["a"], ROW) for _ in range(n)]
        events = [
            {"token": x["token"], "type": "impression", "prediction": x["predictions"][0]}
            for x in answers
        ]
        for chunk in (events[:100], events[100:]):  # the impressions arrive at host b
            r = client.post(f"{fleet.hosts['b'].url}/events", json={"events": chunk})
            assert r.json()["accepted"] == len(chunk), r.text
    _ticks_after(fleet, leader, 3)
    evidence = fleet.status(leader)["evidence"]
    assert evidence["champion"]["impressions"] + evidence["challenger"]["impressions"] == n
    local = fleet.status("b")["arms"]  # counted where they were posted
    assert local["champion"]["impressions"] + local["challenger"]["impressions"] == n


def test_fleet_nan_challenger_is_pulled_on_every_host(fleet: Fleet) -> None:
    _models(fleet, kind="nan_on_large")
    for h in ("a", "b", "c"):
        fleet.start(h)
    leader = fleet.leader()  # the host that sees the NaNs also leads: the hardest case
    _start_rollout(fleet, leader)
    with httpx.Client(timeout=10) as client:

        def pulled_locally() -> bool:
            for _ in range(50):  # the challenger sees ~3% of them
                _predict(client, fleet.hosts[leader], LARGE_ROW)
            return fleet.status(leader)["effective_split_bp"] == 0

        wait(pulled_locally, STATE_S, "the host pulling the NaN challenger")
    fleet.wait_all(lambda s: s["split_bp"] == 0 and s["effective_split_bp"] == 0, "100% champion")
    last = fleet.hosts[leader].wait_for_status(
        lambda s: (s.get("last_rollout") or {}).get("outcome") == "rolled_back", "rolled back"
    )["last_rollout"]
    assert "predictions_in_range" in last["reason"]
    models = rampart("models", "list", "--fleet", fleet.url, "--fleet-name", FLEET)
    assert "failed" in models.stdout.splitlines()[1]
    # The fleet's event log gives the post-mortem, from any machine that reaches the store.
    report = rampart("report", last["id"], "--fleet", fleet.url, "--fleet-name", FLEET)
    assert report.returncode == 0, report.stderr
    assert "predictions_in_range" in report.stdout and "rolled_back" in report.stdout
    # The breach belonged to that rollout: the next one runs on every host, that one too.
    assert fleet.register(write_model(fleet.tmp / "next.onnx", weights=[0.3] * 4)) == ["3"]
    r = fleet.hosts[leader].admin("start", {"version": "3"})
    assert r.status_code == 200, r.text
    fleet.wait_all(split_in_force, "the next rollout's split")


def test_fleet_leader_killed_mid_rollout_the_next_leader_goes_on(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b", "c"):
        fleet.start(h)
    old = fleet.leader()
    rollout = _start_rollout(fleet, old)
    with httpx.Client(timeout=10) as client:
        for _ in range(100):
            _predict(client, fleet.hosts[old], ROW)
    _ticks_after(fleet, old)
    before = fleet.status(old)
    os.killpg(fleet.hosts[old].proc.pid, signal.SIGKILL)
    fleet.hosts[old].proc.wait()
    new = fleet.leader(other_than=old)
    after = fleet.hosts[new].wait_for_status(
        lambda s: s["evaluator"]["updated"] > before["evaluator"]["updated"] + 1, "the new leader"
    )
    assert after["rollout"]["id"] == rollout
    assert after["phase"] == before["phase"]
    assert after["rollout"]["started"] == before["rollout"]["started"]
    # The dead host's published evidence still counts.
    champion = after["evidence"]["champion"]["requests"]
    assert champion >= before["evidence"]["champion"]["requests"]
    fleet.wait_all(split_in_force, "the split on the survivors")


def test_fleet_store_down_serving_goes_on_with_the_last_decision(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b"):
        fleet.start(h)
    _start_rollout(fleet, "a")
    fleet.redis.kill()
    fleet.wait_all(lambda s: s["fleet"]["store"] == "unreachable", "the store unreachable")
    with httpx.Client(timeout=10) as client:
        for h in ("a", "b"):
            arms = {_predict(client, fleet.hosts[h], ROW)["arm"] for _ in range(200)}
            assert "champion" in arms
    for h in ("a", "b"):
        status = fleet.status(h)
        assert status["effective_split_bp"] == 300  # the last decision keeps serving
        assert status["fleet"]["unreachable_since"] is not None
        assert fleet.hosts[h].metric("rampart_fleet_store_up") == 0
    assert "STORE UNREACHABLE" in rampart("status", "--url", fleet.hosts["a"].url).stdout


def test_fleet_host_started_while_the_store_is_down_serves_the_champion(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b"):
        fleet.start(h)
    _start_rollout(fleet, "a")
    stop_server(fleet.hosts["b"])
    fleet.redis.kill()
    b = fleet.start("b")  # its state directory holds both models; the store does not answer
    # Until its agent has read a decision it never will, b serves the champion alone (its
    # workers may still route by the split in its state file for a tick after they start).
    b.wait_for_status(
        lambda s: s["fleet"]["store"] == "unreachable" and s["effective_split_bp"] == 0,
        "b on the champion alone, with no store",
    )
    with httpx.Client(timeout=10) as client:
        assert {_predict(client, b, ROW)["arm"] for _ in range(100)} == {"champion"}
    assert fleet.status("a")["effective_split_bp"] == 300  # a keeps the last decision


def test_fleet_store_restarted_empty_sends_every_host_to_the_champion(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b"):
        fleet.start(h)
    _start_rollout(fleet, "b")
    fleet.redis.restart()  # no persistence: it comes back empty
    fleet.wait_all(lambda s: s["effective_split_bp"] == 0, "100% champion")
    with httpx.Client(timeout=10) as client:
        arms = {_predict(client, fleet.hosts["a"], ROW)["arm"] for _ in range(100)}
    assert arms == {"champion"}


def test_fleet_host_evaluator_restarted_publishes_without_counting_twice(fleet: Fleet) -> None:
    _models(fleet)
    for h in ("a", "b"):
        fleet.start(h)
    leader = fleet.leader()
    other = next(h for h in fleet.hosts if h != leader)
    _start_rollout(fleet, leader)
    n = 150
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            _predict(client, fleet.hosts[other], ROW)
    _ticks_after(fleet, leader)
    before = fleet.status(leader)["evidence"]
    pid = next(
        x["pid"] for x in _host_infos(fleet, leader) if x["id"] == other
    )  # the other host's evaluator process: its supervisor starts a new one
    os.kill(pid, signal.SIGKILL)
    wait(
        lambda: any(x["id"] == other and x["pid"] != pid for x in _host_infos(fleet, leader)),
        STATE_S,
        "a new evaluator on the other host",
    )
    _ticks_after(fleet, leader)
    after = fleet.status(leader)["evidence"]
    total = [e["champion"]["requests"] + e["challenger"]["requests"] for e in (before, after)]
    assert total[0] == total[1] >= n


def _host_infos(fleet: Fleet, leader: str) -> list[dict[str, Any]]:
    from guardrails.fleet_store import FleetStore

    with FleetStore(fleet.url, FLEET) as store:
        return [{"id": h.id, **h.info} for h in store.hosts()]


def test_fleet_serve_refuses_to_start_without_a_token_secret(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAMPART_TOKEN_SECRET")
    out = rampart("serve", "--fleet", fleet.url, "--state-dir", str(fleet.tmp / "x"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rampart: RAMPART_TOKEN_SECRET is required in fleet mode: every host must verify the "
        "event tokens the others sign"
    ]
