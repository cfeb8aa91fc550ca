"""How refusals and failures treat the connection and the event loop, on real servers.

- A 500 (a bug in a Starlette route) says `Connection: close`: Starlette answers the
  exception and re-raises it, and uvicorn then closes the socket; a keep-alive client
  not told so sends its next request into it and gets a reset with no answer.
- An admin command answers within its deadline even when the mailbox is locked and no
  evaluator runs, and /predict keeps being answered by the same worker meanwhile.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from support.net import free_port
from support.server import ADMIN_TOKEN, HOLD_SPLIT, register_pair, serving

from router.app import ADMIN_DEADLINE_S, App
from router.config import Config

ROW = [0.1, 0.2, 0.3, 0.4]


@contextlib.contextmanager
def _uvicorn(app: App) -> Iterator[str]:
    """The app on a real uvicorn (uvloop, httptools, as `rampart serve` runs it) in a
    thread, without its lifespan: no worker, so routes that need one fail."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="critical",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_500_says_connection_close_and_the_next_request_is_answered(tmp_path: Path) -> None:
    app = App(Config.from_dict({"serve": {"state_dir": str(tmp_path)}}))
    with _uvicorn(app) as url, httpx.Client(timeout=10) as client:
        for _ in range(20):  # each time: a new connection, never a dead one
            failed = client.get(f"{url}/status")  # no worker: an AssertionError, a bug
            assert failed.status_code == 500
            assert failed.headers.get("connection") == "close"
            assert client.get(f"{url}/openapi.json").status_code == 200


def test_admin_answers_within_its_deadline_and_predict_flows_meanwhile(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    config = tmp_path / "hold.toml"
    config.write_text(HOLD_SPLIT)
    with serving(state, config=config) as server, server.evaluator_stopped():
        # The mailbox locked for writing, as by a stuck writer: submitting blocks (SQLite's
        # busy timeout is longer than the deadline), and nothing would answer it anyway.
        lock = sqlite3.connect(state / "commands.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        answered: list[int] = []
        try:
            with httpx.Client(timeout=30) as client:

                def predict_meanwhile() -> None:
                    body = {"request_id": "r", "features": ROW}
                    while not done.is_set():
                        r = client.post(f"{server.url}/predict", json=body)
                        answered.append(r.status_code)

                done = threading.Event()
                thread = threading.Thread(target=predict_meanwhile)
                thread.start()
                started = time.monotonic()
                try:
                    r = httpx.post(
                        f"{server.url}/admin/rollout/pause",
                        json={},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        timeout=30,
                    )
                    took = time.monotonic() - started
                    n_during = len(answered)
                finally:
                    done.set()
                    thread.join(30)
        finally:
            lock.rollback()
            lock.close()
    assert r.status_code == 202 and r.json()["error"] == "evaluator_timeout", r.text
    assert took < ADMIN_DEADLINE_S + 1.0, f"the admin answer took {took:.1f} s"
    # One worker serves both: had the wait blocked its loop, nothing would be answered.
    assert n_during >= 10 and set(answered) == {200}, (n_during, set(answered))
