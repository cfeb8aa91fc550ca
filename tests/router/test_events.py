"""/events against real `rampart serve` processes: each event counted exactly once, across
the workers of a host, and what a token from another host gets."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support.server import Server, register_pair, serving, wait_for

from router.layout import Counter
from router.shared_memory import SharedMemory
from router.tokens import TokenSigner

ROW = [0.5, 1.0, -0.5, 2.0]
CHAMPION = {"arm": "champion", "model_version": "1"}


def _predict(client: httpx.Client, url: str, rid: str, rows: int = 1) -> dict[str, Any]:
    r = client.post(f"{url}/predict", json={"request_id": rid, "features": [ROW] * rows})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _post(client: httpx.Client, url: str, events: list[Any]) -> dict[str, Any]:
    r = client.post(f"{url}/events", json={"events": events})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _impression(answer: dict[str, Any], candidate: int | None = None) -> dict[str, Any]:
    event = {"token": answer["token"], "type": "impression", "prediction": 0.02}
    if candidate is not None:
        event["candidate"] = candidate
    return event


def _click(answer: dict[str, Any], candidate: int | None = None) -> dict[str, Any]:
    return {**_impression(answer, candidate), "type": "click"}


def _events(server: Server, kind: str) -> float:
    return server.metric("rampart_events_total", **CHAMPION, type=kind)


def test_events_same_impression_three_times_counts_once(server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        answer = _predict(client, server.url, "e1")
        impression = _impression(answer)
        result = _post(client, server.url, [impression] * 3 + [_click(answer)])
        assert result == {"accepted": 4, "rejected": 0, "duplicates": 2, "errors": []}
        # A retry of the whole post after a timeout: accepted, nothing counted again.
        again = _post(client, server.url, [impression, _click(answer)])
        assert again == {"accepted": 2, "rejected": 0, "duplicates": 2, "errors": []}
    assert _events(server, "impression") == 1
    assert _events(server, "click") == 1
    assert server.metric("rampart_events_duplicates_total", **CHAMPION) == 4
    assert 0 < server.metric("rampart_events_dedupe_fill_ratio") < 0.001
    assert 0 <= server.metric("rampart_events_dedupe_false_duplicate_ratio") < 1e-9


def test_events_each_predict_answer_has_its_own_token(server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        first = _predict(client, server.url, "same-id")
        second = _predict(client, server.url, "same-id")
        assert first["token"] != second["token"]
        result = _post(client, server.url, [_impression(first), _impression(second)])
    assert result["duplicates"] == 0 and _events(server, "impression") == 2


def test_events_name_their_candidate(server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        slate = _predict(client, server.url, "slate", rows=3)
        single = _predict(client, server.url, "single")
        result = _post(
            client,
            server.url,
            [
                _impression(slate, 0),
                _impression(slate, 2),
                _impression(slate),  # no candidate: the first, already counted
                _click(slate, 2),
                _impression(single),  # an old client: token, type and prediction only
                _impression(slate, 3),  # past the answer's three candidates
                _impression(slate, -1),
                {**_impression(slate), "candidate": "1"},
                {**_impression(slate), "candidate": True},
                _impression(single, 1),
            ],
        )
    assert result["accepted"] == 5 and result["duplicates"] == 1
    assert [e["index"] for e in result["errors"]] == [5, 6, 7, 8, 9]
    assert {e["reason"] for e in result["errors"]} == {"bad_candidate"}
    assert _events(server, "impression") == 3 and _events(server, "click") == 1
    assert server.metric("rampart_rejected_total", reason="bad_candidate") == 5


def test_events_click_without_impression_is_refused_until_its_impression(
    server: Server,
) -> None:
    with httpx.Client(timeout=10) as client:
        answer = _predict(client, server.url, "orphan")
        early = _post(client, server.url, [_click(answer)])
        assert early["accepted"] == 0 and early["duplicates"] == 0
        assert early["errors"] == [{"index": 0, "reason": "click_without_impression"}]
        assert _events(server, "click") == 0
        # The impression arrives; the click posted again now counts, once.
        later = _post(client, server.url, [_impression(answer), _click(answer), _click(answer)])
        assert later == {"accepted": 3, "rejected": 0, "duplicates": 1, "errors": []}
    assert _events(server, "impression") == 1 and _events(server, "click") == 1
    assert server.metric("rampart_events_orphan_clicks_total", **CHAMPION) == 1
    assert server.metric("rampart_rejected_total", reason="click_without_impression") == 1


def test_events_refuse_bad_tokens_and_fields(server: Server) -> None:
    with httpx.Client(timeout=10) as client:
        token = _predict(client, server.url, "e2")["token"]
        tampered = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
        signer = TokenSigner((server.state / "token.secret").read_bytes(), 3600)
        expired = signer.sign(1, 0, 0, int(time.time()) - 3601)
        unknown = signer.sign(99, 0, 0, int(time.time()))
        old_format = "AQEAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"  # a 32-character token of before
        result = _post(
            client,
            server.url,
            [
                {"token": tampered, "type": "impression", "prediction": 0.1},
                {"token": expired, "type": "impression", "prediction": 0.1},
                {"token": unknown, "type": "impression", "prediction": 0.1},
                {"token": token, "type": "view", "prediction": 0.1},
                {"token": token, "type": "click", "prediction": 1.5},
                "not-an-event",
                {"token": old_format, "type": "impression", "prediction": 0.1},
            ],
        )
        too_many = client.post(f"{server.url}/events", json={"events": [{}] * 1001})
    assert result["accepted"] == 0 and result["rejected"] == 7
    assert [e["reason"] for e in result["errors"]] == [
        "bad_token",
        "expired_token",
        "unknown_model_version",
        "bad_event",
        "bad_prediction",
        "bad_event",
        "bad_token",
    ]
    assert _events(server, "impression") == 0
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_events"


# -- the workers of one host ---------------------------------------------------------------
def _requests_per_slab(state: Path) -> np.ndarray:
    shm = SharedMemory.attach(state)
    try:
        return shm.slabs["slots"]["counters"][:, :, Counter.REQUESTS].sum(axis=1).copy()
    finally:
        shm.close()


def _slab_counter(state: Path, slab: int, counter: Counter) -> int:
    shm = SharedMemory.attach(state)
    try:
        return int(shm.slabs["slots"]["counters"][slab, :, counter].sum())
    finally:
        shm.close()


@pytest.fixture
def two_workers(registered: Path) -> Iterator[Server]:
    with serving(registered, workers=2) as s:
        yield s


@pytest.fixture
def clients(two_workers: Server) -> Iterator[dict[int, httpx.Client]]:
    """One kept-alive connection to each of the two workers, by slab index: new connections
    until the request counts show one landed on each slab."""
    server = two_workers
    found: dict[int, httpx.Client] = {}

    def both() -> bool:
        client = httpx.Client(timeout=10)
        before = _requests_per_slab(server.state)
        _predict(client, server.url, "probe")
        slab = int(np.flatnonzero(_requests_per_slab(server.state) - before)[0])
        if slab in found:
            client.close()
        else:
            found[slab] = client
        return len(found) == 2

    try:
        wait_for(both, 60, "a connection to each of the two workers")
        yield found
    finally:
        for client in found.values():
            client.close()


def test_events_same_event_at_two_workers_counts_once(
    two_workers: Server, clients: dict[int, httpx.Client]
) -> None:
    server = two_workers
    (x, cx), (y, cy) = sorted(clients.items())
    answer = _predict(cx, server.url, "cross")
    first = _post(cx, server.url, [_impression(answer)])
    retry = _post(cy, server.url, [_impression(answer), _click(answer)])
    assert first["duplicates"] == 0 and first["accepted"] == 1
    assert retry == {"accepted": 2, "rejected": 0, "duplicates": 1, "errors": []}
    # The click at y found the impression that x counted: the filter is the host's.
    assert _events(server, "impression") == 1 and _events(server, "click") == 1
    assert _slab_counter(server.state, y, Counter.EVENT_DUPLICATES) == 1
    assert _slab_counter(server.state, x, Counter.EVENT_DUPLICATES) == 0


def test_events_concurrent_duplicates_at_two_workers_never_double_count(
    two_workers: Server, clients: dict[int, httpx.Client]
) -> None:
    server = two_workers
    first = next(iter(clients.values()))
    slates = [_predict(first, server.url, f"storm{i}", rows=250) for i in range(4)]
    rounds = [[_impression(s, c) for c in range(250)] for s in slates]
    start = threading.Barrier(len(clients))
    answers: list[dict[str, Any]] = []

    def post_all(client: httpx.Client) -> None:
        for events in rounds:
            start.wait()  # both workers get the same 250 events at the same moment
            answers.append(_post(client, server.url, events))

    threads = [threading.Thread(target=post_all, args=(c,)) for c in clients.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 8 and all(a["accepted"] == 250 for a in answers)
    assert sum(a["duplicates"] for a in answers) == 1000
    assert _events(server, "impression") == 1000
    assert server.metric("rampart_events_duplicates_total", **CHAMPION) == 1000


# -- another host --------------------------------------------------------------------------
def test_events_from_another_host_count_once_per_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two hosts with one token secret, as in fleet mode: a token issued by a is verified
    # and counted at b, deduplicated there, and shows as foreign. b's filter is not a's.
    monkeypatch.setenv("RAMPART_TOKEN_SECRET", "a-fleet-wide-token-secret")
    with (
        serving(register_pair(tmp_path / "a" / "state")) as a,
        serving(register_pair(tmp_path / "b" / "state")) as b,
        httpx.Client(timeout=10) as client,
    ):
        answer = _predict(client, a.url, "fleet")
        at_b = _post(client, b.url, [_impression(answer), _impression(answer), _click(answer)])
        assert at_b == {"accepted": 3, "rejected": 0, "duplicates": 1, "errors": []}
        assert _events(b, "impression") == 1 and _events(b, "click") == 1
        assert b.metric("rampart_events_foreign_total", **CHAMPION) == 2
        # Posted to its own host as well, it is counted there too: exactly once holds per
        # host, which is why a host's ad server posts every event of a token to that host.
        assert _post(client, a.url, [_impression(answer)])["duplicates"] == 0
        assert a.metric("rampart_events_foreign_total", **CHAMPION) == 0


def test_events_refused_not_blocked_while_another_process_holds_the_filter(
    server: Server,
) -> None:
    # A stalled holder of the filter's lock (here this test) costs /events a bounded wait
    # and a 503 naming it, nothing counted; /predict keeps answering; the batch posted
    # again once the lock is free counts.
    with httpx.Client(timeout=10) as client:
        answer = _predict(client, server.url, "busy")
        fd = os.open(server.state / "locks" / "dedupe.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            started = time.monotonic()
            r = client.post(f"{server.url}/events", json={"events": [_impression(answer)]})
            waited = time.monotonic() - started
            assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
            assert "post the batch again" in r.json()["detail"]
            assert waited < 5  # bounded by LOCK_WAIT_S, not by the holder
            assert _predict(client, server.url, "still-serving")["predictions"]
        finally:
            os.close(fd)
        again = _post(client, server.url, [_impression(answer)])
    assert again == {"accepted": 1, "rejected": 0, "duplicates": 0, "errors": []}
    assert _events(server, "impression") == 1
