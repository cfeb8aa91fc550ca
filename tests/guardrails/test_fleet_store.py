from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from support.redis_server import RedisServer, needs_redis, running_redis

from guardrails.fleet_store import FleetStore, Lease, StoreUnavailable

pytestmark = needs_redis


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def store(shared_redis: RedisServer) -> Iterator[FleetStore]:
    # One server for the module; each test its own fleet, which is also the key isolation.
    with FleetStore(shared_redis.url, f"t-{uuid.uuid4().hex[:8]}") as s:
        yield s


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def leader(store: FleetStore, host: str = "a", lease_ms: int = 10_000) -> Lease:
    lease = store.acquire_or_renew(host, lease_ms)
    assert lease is not None
    return lease


def raw(store: FleetStore) -> Any:
    """The redis-py client underneath: to look at keys, or to plant old or corrupt data."""
    return store._redis


def model(name: str = "m") -> dict[str, Any]:
    return {"name": name, "features": ["f0", "f1"]}


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": "a}b"}, "fleet name", id="brace-breaks-hash-tag"),
        pytest.param({"name": ""}, "fleet name", id="empty-name"),
        pytest.param({"timeout_s": 0}, "timeout_s", id="zero-timeout"),
        pytest.param({"url": "http://x"}, "fleet store URL", id="not-redis-url"),
    ],
)
def test_fleet_store_rejects_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"url": "redis://127.0.0.1:1/0", "name": "ok"} | kwargs
    with pytest.raises(ValueError, match=message):
        FleetStore(args.pop("url"), args.pop("name"), **args)


def test_fleet_store_keys_share_one_cluster_slot(own_redis: RedisServer) -> None:
    store = FleetStore(own_redis.url, "slot")
    store.heartbeat("h", {})
    store.publish_evidence("r1", "h", "i1", 1, b"x")
    store.put_model(model(), b"m")
    store.submit_command("pause", {})
    assert store.write_decision(leader(store).epoch, {})
    keys = raw(store).keys("*")
    assert len(keys) >= 10
    assert all(k.startswith(f"rampart:{{{store.name}}}:".encode()) for k in keys)
    assert {key_slot(k) for k in keys} == {key_slot(store.name.encode())}
    store.close()


def test_fleet_store_ping(store: FleetStore) -> None:
    assert store.ping() is True


# --- lease and fencing --------------------------------------------------------------------


def test_lease_acquire_then_renew_keeps_epoch(store: FleetStore) -> None:
    first = leader(store, "a")
    again = leader(store, "a")
    assert again.epoch == first.epoch
    assert again.host_id == "a"
    assert again.expires_at > first.expires_at
    assert store.leader() == ("a", first.epoch)


def test_lease_held_by_another_host_is_refused(store: FleetStore) -> None:
    held = leader(store, "a")
    assert store.acquire_or_renew("b", 10_000) is None
    assert store.leader() == ("a", held.epoch)


def test_lease_expiry_lets_another_host_take_over_with_next_epoch(store: FleetStore) -> None:
    old = leader(store, "a", lease_ms=100)
    time.sleep(0.15)
    new = leader(store, "b")
    assert new.epoch > old.epoch
    assert store.acquire_or_renew("a", 10_000) is None
    assert store.leader() == ("b", new.epoch)


def test_lease_epoch_is_above_both_the_last_epoch_and_the_server_clock(
    store: FleetStore,
) -> None:
    sec, usec = raw(store).time()
    assert leader(store, "a").epoch >= sec * 1000 + usec // 1000
    store.resign("a")
    raw(store).set(store.key("epoch"), 10**13)  # ahead of the clock: the next is + 1
    assert leader(store, "b").epoch == 10**13 + 1


def test_lease_resign_hands_over_at_once(store: FleetStore) -> None:
    old = leader(store, "a")
    assert store.resign("b") is False  # not b's lease
    assert store.resign("a") is True
    assert leader(store, "b").epoch > old.epoch


def test_lease_renewal_extends_expiry(store: FleetStore) -> None:
    leader(store, "a", lease_ms=300)
    for _ in range(4):  # 0.4 s in all: past the first lease, kept alive by renewals
        time.sleep(0.1)
        assert store.acquire_or_renew("a", 300) is not None
    assert store.acquire_or_renew("b", 300) is None


def deposed(store: FleetStore) -> tuple[int, int]:
    old = leader(store, "a", lease_ms=50)
    time.sleep(0.08)
    return old.epoch, leader(store, "b").epoch


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s, e: s.write_decision(e, {"split_bp": 10_000}), id="write_decision"),
        pytest.param(lambda s, e: s.save_state(e, "rollout", b"late"), id="save_state"),
        pytest.param(lambda s, e: s.append_event(e, {"kind": "late"}), id="append_event"),
        pytest.param(lambda s, e: s.forget_evidence(e, "r1"), id="forget_evidence"),
        pytest.param(
            lambda s, e: s.finish_command(e, s.pending_commands()[0].id, {"ok": False}),
            id="finish_command",
        ),
        pytest.param(
            lambda s, e: s.set_model_status(e, 1, "failed", "late"), id="set_model_status"
        ),
    ],
)
def test_fenced_write_by_deposed_leader_is_rejected_and_changes_nothing(
    store: FleetStore, write: Callable[[FleetStore, int], Any]
) -> None:
    store.put_model(model(), b"onnx")
    store.submit_command("rollback", {})
    store.publish_evidence("r1", "h", "i", 1, b"evidence")
    old, new = deposed(store)
    assert store.write_decision(new, {"split_bp": 300})
    assert store.save_state(new, "rollout", b"current")
    before = _dump(store)
    assert not write(store, old)
    assert _dump(store) == before
    assert write(store, new)  # the same write with the current epoch goes through


def _dump(store: FleetStore) -> dict[bytes, Any]:
    r = raw(store)
    out: dict[bytes, Any] = {}
    for key in r.keys(f"rampart:{{{store.name}}}:*"):
        kind = r.type(key)
        if kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"string":
            out[key] = r.get(key)
        elif kind == b"stream":
            out[key] = r.xrange(key)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1)
    return out


def test_fenced_write_rejects_non_epoch_values(store: FleetStore) -> None:
    with pytest.raises(ValueError, match="fencing epoch"):
        store.write_decision(0, {})
    with pytest.raises(ValueError, match="fencing epoch"):
        store.save_state(True, "k", b"v")


# --- decision, state, events --------------------------------------------------------------


def test_decision_versions_are_monotonic_across_leaders(store: FleetStore) -> None:
    assert store.read_decision() is None
    a = leader(store, "a", lease_ms=50)
    versions = []
    for split in (300, 1_000):
        assert store.write_decision(a.epoch, {"split_bp": split})
        versions.append(store.read_decision().version)  # type: ignore[union-attr]
    time.sleep(0.08)
    b = leader(store, "b")
    assert store.write_decision(b.epoch, {"split_bp": 0})
    got = store.read_decision()
    assert got is not None
    versions.append(got.version)
    assert versions == [1, 2, 3]
    assert (got.epoch, got.body) == (b.epoch, {"split_bp": 0})
    assert abs(got.t - time.time()) < 5


def test_decision_body_round_trips_exactly(store: FleetStore) -> None:
    body = {"phase": 3, "p_better": 0.6180339887498949, "guardrails": [{"name": "x", "ok": True}]}
    assert store.write_decision(leader(store).epoch, body)
    assert store.read_decision().body == body  # type: ignore[union-attr]


def test_state_round_trips_bytes_for_the_next_leader(store: FleetStore) -> None:
    assert store.load_state("rollout") is None
    blob = bytes(range(256)) * 4
    assert store.save_state(leader(store, "a", lease_ms=50).epoch, "rollout", blob)
    time.sleep(0.08)
    leader(store, "b")
    assert store.load_state("rollout") == blob


def test_events_append_with_increasing_seq_and_read_newest(store: FleetStore) -> None:
    epoch = leader(store).epoch
    seqs = [store.append_event(epoch, {"kind": "advance", "phase": p}) for p in range(1, 6)]
    assert seqs == [1, 2, 3, 4, 5]
    newest = store.events(limit=2)
    assert [(e.seq, e.epoch, e.record["phase"]) for e in newest] == [(4, epoch, 4), (5, epoch, 5)]
    assert abs(newest[-1].t - time.time()) < 5


# --- evidence -----------------------------------------------------------------------------


def test_evidence_duplicate_publish_is_counted_once(store: FleetStore) -> None:
    assert store.publish_evidence("r1", "h1", "i1", 7, b"seven")
    assert not store.publish_evidence("r1", "h1", "i1", 7, b"seven")  # a retry
    assert store.all_evidence("r1") == [("h1", "i1", b"seven")]


def test_evidence_out_of_order_publish_keeps_the_newest(store: FleetStore) -> None:
    assert store.publish_evidence("r1", "h1", "i1", 9, b"nine")
    assert not store.publish_evidence("r1", "h1", "i1", 8, b"eight")  # late, older
    assert store.publish_evidence("r1", "h1", "i1", 10, b"ten")
    assert store.all_evidence("r1") == [("h1", "i1", b"ten")]


def test_evidence_new_incarnation_keeps_the_old_one_counted(store: FleetStore) -> None:
    store.publish_evidence("r1", "h1", "old", 500, b"before the wipe")
    assert store.publish_evidence("r1", "h1", "new", 1, b"after the wipe")  # seq restarts
    store.publish_evidence("r1", "h2", "x", 3, b"other host")
    assert store.all_evidence("r1") == [
        ("h1", "new", b"after the wipe"),
        ("h1", "old", b"before the wipe"),
        ("h2", "x", b"other host"),
    ]


def test_evidence_is_scoped_by_rollout_and_forgotten_by_the_leader(store: FleetStore) -> None:
    store.publish_evidence("r1", "h1", "i1", 5, b"r1")
    store.publish_evidence("r2", "h1", "i1", 1, b"r2")  # a new rollout starts fresh
    assert store.all_evidence("r2") == [("h1", "i1", b"r2")]
    assert store.forget_evidence(leader(store).epoch, "r1")
    assert store.all_evidence("r1") == []
    assert store.publish_evidence("r1", "h1", "i1", 1, b"again")  # seqs forgotten too
    ttl = raw(store).pttl(store.key("evidence:r2"))
    assert 13 * 86_400_000 < ttl <= 14 * 86_400_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("r1", "h", "i", 1, b"x" * (64 * 1024 + 1)), "bytes >", id="too-big"),
        pytest.param(("r1", "h|x", "i", 1, b"x"), "host id", id="pipe-in-host"),
        pytest.param(("r1", "h", "", 1, b"x"), "incarnation", id="empty-incarnation"),
        pytest.param(("r1", "h", "i", -1, b"x"), "seq", id="negative-seq"),
    ],
)
def test_evidence_publish_rejects_bad_arguments(
    store: FleetStore, args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.publish_evidence(*args)


# --- hosts --------------------------------------------------------------------------------


def test_hosts_report_age_and_info(store: FleetStore) -> None:
    store.heartbeat("b", {"models": [1, 2], "breach": False})
    time.sleep(0.2)
    store.heartbeat("a", {"models": [1], "breach": True})
    hosts = store.hosts()
    assert [(h.id, h.info) for h in hosts] == [
        ("a", {"models": [1], "breach": True}),
        ("b", {"models": [1, 2], "breach": False}),
    ]
    assert hosts[0].age_s < 0.15 <= hosts[1].age_s < 2


def test_hosts_unseen_for_an_hour_are_pruned(store: FleetStore) -> None:
    r = raw(store)
    sec, _ = r.time()
    r.zadd(store.key("hosts"), {"gone": (sec - 3_601) * 1000, "quiet": (sec - 3_500) * 1000})
    r.hset(store.key("host-info"), mapping={"gone": "{}", "quiet": "{}"})
    store.heartbeat("live", {})
    assert [h.id for h in store.hosts()] == ["live", "quiet"]
    assert r.zscore(store.key("hosts"), "gone") is None
    assert not r.hexists(store.key("host-info"), "gone")


# --- the host tick ------------------------------------------------------------------------


def test_tick_does_heartbeat_publish_lease_and_read_in_one_round_trip(
    store: FleetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.tick("warm", {}, lease_ms=10_000)  # connect and load scripts first
    a = store.acquire_or_renew("warm", 10_000)
    assert a is not None and store.write_decision(a.epoch, {"split_bp": 300})
    sends = []
    real = redis.connection.Connection.send_packed_command

    def counting(conn: Any, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        real(conn, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    tick = store.tick("h1", {"breach": False}, evidence=("r1", "i1", 1, b"e"), lease_ms=5_000)
    assert len(sends) == 1
    assert tick.published is True
    assert tick.lease is None  # "warm" leads
    assert tick.decision is not None and tick.decision.body == {"split_bp": 300}
    assert tick.generation == store.generation() is not None
    assert [h.id for h in store.hosts()] == ["h1", "warm"]
    assert store.all_evidence("r1") == [("h1", "i1", b"e")]
    assert store.tick("h1", {}, evidence=("r1", "i1", 1, b"e")).published is False


def test_tick_takes_the_lease_when_nobody_leads(store: FleetStore) -> None:
    tick = store.tick("h1", {}, lease_ms=5_000)
    assert tick.lease is not None and tick.lease.host_id == "h1"
    assert tick.published is None and tick.decision is None
    renewed = store.tick("h1", {}, lease_ms=5_000).lease
    assert renewed is not None and renewed.epoch == tick.lease.epoch
    assert store.tick("h2", {}, lease_ms=5_000).lease is None
    assert store.leader() == ("h1", tick.lease.epoch)


# --- admin commands -----------------------------------------------------------------------


def test_commands_round_trip_through_the_leader(store: FleetStore) -> None:
    first = store.submit_command("rollout.start", {"version": 2})
    second = store.submit_command("pause", {})
    pending = store.pending_commands()
    assert [(c.id, c.kind, c.payload) for c in pending] == [
        (first, "rollout.start", {"version": 2}),
        (second, "pause", {}),
    ]
    assert abs(pending[0].submitted - time.time()) < 5
    assert store.command_result(first) is None
    epoch = leader(store).epoch
    assert store.finish_command(epoch, first, {"ok": True, "rollout": "r7"})
    assert not store.finish_command(epoch, first, {"ok": False})  # already finished
    assert store.command_result(first) == {"ok": True, "rollout": "r7"}
    assert [c.id for c in store.pending_commands()] == [second]


# --- model registry -----------------------------------------------------------------------


def test_models_first_registered_becomes_champion(store: FleetStore) -> None:
    one = store.put_model(model("a"), b"model a")
    two = store.put_model(model("b"), b"model b")
    assert (one["version"], one["status"]) == (1, "champion")
    assert (two["version"], two["status"]) == (2, "candidate")
    assert [m["version"] for m in store.models()] == [1, 2]
    got = store.get_model(2)
    assert got == two
    assert got["sha256"] == hashlib.sha256(b"model b").hexdigest()
    assert got["features"] == ["f0", "f1"]
    assert store.next_version() == 3


def test_models_racing_registrations_make_one_champion(store: FleetStore) -> None:
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.put_model(model(), b"%d" % i)))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["version"] for r in results) == list(range(1, 9))
    assert [r["status"] for r in results].count("champion") == 1


def test_model_bytes_round_trip_content_addressed(store: FleetStore) -> None:
    data = bytes(range(256)) * 1_000
    record = store.put_model(model(), data)
    store.put_model(model("again"), data)
    assert store.model_bytes(record["sha256"]) == data
    assert hashlib.sha256(store.model_bytes(record["sha256"])).hexdigest() == record["sha256"]
    assert len(raw(store).keys(store.key("blob:*"))) == 1
    with pytest.raises(KeyError, match="no model bytes"):
        store.model_bytes("0" * 64)


def test_model_bytes_that_fail_their_sha256_are_refused(store: FleetStore) -> None:
    sha = store.put_model(model(), b"good")["sha256"]
    raw(store).set(store.key(f"blob:{sha}"), b"bad")
    with pytest.raises(StoreUnavailable, match="fail their sha256"):
        store.model_bytes(sha)


def test_model_registration_refuses_a_taken_version_or_wrong_sha(store: FleetStore) -> None:
    store.put_model(model() | {"version": 5}, b"x")
    with pytest.raises(ValueError, match="already registered"):
        store.put_model(model() | {"version": 5}, b"y")
    with pytest.raises(ValueError, match="sha256"):
        store.put_model(model() | {"sha256": "0" * 64}, b"z")
    assert store.next_version() == 6


def test_model_status_promotion_is_one_flip_and_fenced(store: FleetStore) -> None:
    store.put_model(model("a"), b"a")
    store.put_model(model("b"), b"b")
    assert store.set_model_status(None, 2, "challenger")  # the CLI path, unfenced
    epoch = leader(store).epoch
    assert store.set_model_statuses(epoch, {2: ("champion", ""), 1: ("retired", "replaced by 2")})
    assert [(m["version"], m["status"], m["reason"]) for m in store.models()] == [
        (1, "retired", "replaced by 2"),
        (2, "champion", ""),
    ]
    with pytest.raises(KeyError, match="no model version 9"):
        store.set_model_statuses(epoch, {2: ("failed", ""), 9: ("failed", "")})
    assert store.get_model(2)["status"] == "champion"  # nothing applied
    with pytest.raises(KeyError):
        store.get_model(9)


def test_model_queue_keeps_order_replaces_and_refuses(store: FleetStore) -> None:
    for name in "abcd":
        store.put_model(model(name), name.encode())
    assert store.queue_model(2) == [] and store.queue_model(3) == []
    assert store.queue_model(2) == []  # already queued: stays where it is
    assert [m["version"] for m in store.queued_models()] == [2, 3]
    assert store.queue_model(4, replace=True) == [2, 3]
    assert [m["version"] for m in store.queued_models()] == [4]
    assert (store.get_model(2)["status"], store.get_model(2)["reason"]) == (
        "candidate",
        "replaced in the queue by 4",
    )
    with pytest.raises(ValueError, match="model 1 is champion"):
        store.queue_model(1)
    with pytest.raises(KeyError, match="no model version 9"):
        store.queue_model(9)
    store.queue_model(2)
    assert [m["version"] for m in store.queued_models()] == [4, 2]  # back of the queue


def test_model_status_records_its_rollout_and_leaves_the_queue(store: FleetStore) -> None:
    store.put_model(model("a"), b"a")
    store.put_model(model("b"), b"b")
    store.queue_model(2)
    epoch = leader(store).epoch
    assert store.set_model_status(epoch, 2, "challenger", "rollout started", "r-1")
    assert store.queued_models() == []
    assert raw(store).zcard(store.key("queue")) == 0
    got = store.get_model(2)
    assert (got["status"], got["reason"], got["rollout_id"]) == (
        "challenger",
        "rollout started",
        "r-1",
    )
    assert store.set_model_statuses(epoch, {2: ("champion", ""), 1: ("retired", "")}, "r-1")
    assert {m["version"]: m["rollout_id"] for m in store.models()} == {1: "r-1", 2: "r-1"}


# --- wake-ups -----------------------------------------------------------------------------


def test_wakeup_arrives_on_a_new_decision_and_on_publish(store: FleetStore) -> None:
    wakeups = store.wakeups()
    try:
        assert wakeups.wait(0.1) is False
        assert store.write_decision(leader(store).epoch, {"split_bp": 0})
        assert wakeups.wait(2) is True
        assert store.publish_wakeup() == 1
        assert wakeups.wait(2) is True
    finally:
        wakeups.close()


# --- store loss and outages ---------------------------------------------------------------


def test_generation_changes_when_the_store_restarts_empty(own_redis: RedisServer) -> None:
    store = FleetStore(own_redis.url, "g")
    assert store.generation() is None
    old = leader(store)
    remembered = store.generation()
    assert remembered is not None and store.ensure_generation() == remembered
    own_redis.restart(empty=True)
    assert store.generation() is None  # lost: the caller goes 100% champion
    new = leader(store, "b")
    assert store.generation() not in (None, remembered)
    # Epochs follow the server clock: the old leader's epoch stays fenced out.
    assert new.epoch > old.epoch
    assert not store.write_decision(old.epoch, {"split_bp": 5_000})
    store.close()


def test_store_with_aof_keeps_state_across_a_crash(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", aof=True) as server:
        store = FleetStore(server.url, "p")
        epoch = leader(store).epoch
        assert store.write_decision(epoch, {"split_bp": 1_000})
        generation = store.generation()
        server.restart()  # kill -9, then start from the append-only file
        assert store.generation() == generation
        assert store.read_decision().body == {"split_bp": 1_000}  # type: ignore[union-attr]
        assert store.tick("h", {}, lease_ms=1_000).generation == generation  # scripts reloaded
        store.close()


def test_store_killed_raises_store_unavailable_at_once(own_redis: RedisServer) -> None:
    store = FleetStore(own_redis.url, "k")
    store.heartbeat("h", {})
    own_redis.kill()
    for call in (store.read_decision, lambda: store.tick("h", {}, lease_ms=1_000)):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - started < 0.6
    assert store.ping() is False


@pytest.mark.parametrize(
    "connected", [pytest.param(True, id="pooled"), pytest.param(False, id="new")]
)
def test_store_frozen_raises_store_unavailable_within_the_timeout(
    own_redis: RedisServer, connected: bool
) -> None:
    store = FleetStore(own_redis.url, "f", timeout_s=0.5)
    if connected:
        store.heartbeat("h", {})
    own_redis.freeze()
    try:
        for call in (
            store.read_decision,
            lambda: store.tick("h", {}, evidence=("r", "i", 1, b"x"), lease_ms=1_000),
            lambda: store.all_evidence("r"),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started <= 0.6
    finally:
        own_redis.thaw()
    assert store.read_decision() is None  # back once the store answers again
    store.close()
