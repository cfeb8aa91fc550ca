"""The `rampart` command line against a real `rampart serve`: `status` (table, --json,
--watch, an unreachable server) and `report` on the state directory a real evaluator
process wrote, read after the server has stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from support.net import free_port
from support.server import (
    ADMIN_TOKEN,
    STATE_S,
    Server,
    rampart,
    register_pair,
    serving,
    wait_for,
)

from guardrails.rollouts import Journal
from rampart.status_table import status_text as _status_text


def _config(tmp: Path) -> Path:
    path = tmp / "rampart.toml"
    path.write_text("[rollout]\njournal_every_s = 0.0\n")  # a metrics record every tick
    return path


def _start_rollout(server: Server) -> str:
    """Start rolling out version 2; its id once phase 1's guardrails have been evaluated."""
    server.start_rollout("2")
    status = server.wait_for_status(
        lambda s: s["phase"] == 1 and bool(s["guardrails"]), "phase 1's guardrails evaluated"
    )
    return str(status["rollout"]["id"])


def _metrics_records(state: Path, rollout_id: str) -> int:
    journal = Journal(state)
    try:
        return len(journal.events(rollout_id, kinds=("metrics",)))
    finally:
        journal.close()


@pytest.fixture(scope="module")
def rolling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a rollout in phase 1 whose guardrails have been evaluated."""
    with serving(register_pair(tmp_path_factory.mktemp("rolling") / "state")) as server:
        _start_rollout(server)
        yield server


def test_status_prints_phase_split_guardrails_next_and_arms(rolling: Server) -> None:
    out = rampart("status", "--url", rolling.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("rollout r") and lines[0].endswith("tiny:2 vs tiny:1")
    assert lines[1].startswith("phase 1/5  running  split 3.0%  in phase ")
    assert "(min 1d00h, max 2d00h)" in lines[1]  # the default phase 1: 24-48 h
    status = rolling.status()
    table = lines[lines.index(next(x for x in lines if x.startswith("GUARDRAIL"))) :]
    for g in status["guardrails"]:
        row = next(x for x in table if x.startswith(g["name"] + " "))
        assert row.split()[-1] == g["state"] and g["threshold"] in row
    assert any(x.startswith("next: ") for x in lines)
    assert any(x.split()[:2] == ["champion", "tiny:1"] for x in lines)
    assert any(x.split()[:2] == ["challenger", "tiny:2"] for x in lines)
    assert "\033[" not in out.stdout  # no colour when stdout is not a terminal


def test_status_json_prints_the_raw_status(rolling: Server) -> None:
    out = rampart("status", "--url", rolling.url, "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["phase"] == 1 and status["split_bp"] == 300
    assert status["models"]["challenger"]["version"] == "2"
    assert {g["state"] for g in status["guardrails"]} <= {"pass", "fail", "waiting"}


def test_status_text_colours_each_state_for_a_terminal(rolling: Server) -> None:
    status = rolling.status()
    status["guardrails"][0]["state"] = "fail"
    status["guardrails"][1]["state"] = "waiting"
    plain = _status_text(status, colour=False).splitlines()
    coloured = _status_text(status, colour=True).splitlines()
    colours = {"pass": "\033[32m", "fail": "\033[31;1m", "waiting": "\033[33m"}
    for g in status["guardrails"]:
        i = next(i for i, x in enumerate(plain) if x.startswith(g["name"] + " "))
        # Same columns as the plain table, the state wrapped in its colour.
        assert coloured[i] == plain[i][: -len(g["state"])] + (
            f"{colours[g['state']]}{g['state']}\033[0m"
        )


def _collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def test_status_watch_refreshes_until_interrupted(rolling: Server) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rampart.cli", "status", "--watch", "--url", rolling.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    errors: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    # Both pipes drained as the command writes: a full pipe would block it, not the test.
    readers = [
        threading.Thread(target=_collect, args=(pipe, out), daemon=True)
        for pipe, out in ((proc.stdout, lines), (proc.stderr, errors))
    ]
    for reader in readers:
        reader.start()
    try:
        # Refreshed at least once: the table printed a second time.
        wait_for(lambda: sum(x.startswith("phase 1/5") for x in lines) >= 2, STATE_S, "a refresh")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(STATE_S)
    for reader in readers:
        reader.join(10)
    stderr = "".join(errors)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_status_unreachable_server_exits_1_with_a_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = rampart("status", "--url", url)
    assert out.returncode == 1
    assert f"rampart: cannot read {url}/status" in out.stderr
    assert "Traceback" not in out.stderr


def test_report_renders_a_rollout_after_the_server_is_gone(tmp_path: Path) -> None:
    with serving(register_pair(tmp_path / "state"), config=_config(tmp_path)) as server:
        rollout_id = _start_rollout(server)
        wait_for(
            lambda: _metrics_records(server.state, rollout_id) >= 2,
            STATE_S,
            "two metrics records in the rollout's journal",
        )
        env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
        out = rampart("rollout", "rollback", "--url", server.url, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
    state = str(server.state)

    md = rampart("report", rollout_id, "--state-dir", state)
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith(f"# Rollout {rollout_id}: tiny:2 vs tiny:1")
    assert "- **Outcome:** rolled_back" in md.stdout
    assert "| 1 |" in md.stdout and "**failed**" in md.stdout
    assert "rolled back in phase 1 (manual)" in md.stdout
    assert "Sampled metric records" in md.stdout

    out_file = tmp_path / "postmortem.html"
    page = rampart("report", rollout_id, "--format", "html", "--state-dir", state)
    written = rampart(
        "report", rollout_id, "--format", "html", "--state-dir", state, "--out", str(out_file)
    )
    assert page.returncode == 0 and written.returncode == 0, written.stderr
    assert out_file.read_text() == page.stdout
    assert page.stdout.startswith("<!DOCTYPE html>") and "<svg" in page.stdout

    listed = rampart("report", "--list", "--state-dir", state)
    assert listed.returncode == 0
    assert listed.stdout.startswith(rollout_id) and "rolled_back" in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["r-nope"], "no rollout 'r-nope'", id="unknown-id"),
        pytest.param([], "report needs a ROLLOUT_ID", id="no-id"),
    ],
)
def test_report_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    state = tmp_path / "state"
    Journal(state).close()  # an empty journal
    out = rampart("report", *args, "--state-dir", str(state))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_report_without_a_journal_exits_2(tmp_path: Path) -> None:
    out = rampart("report", "r1", "--state-dir", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert "no rollout journal" in out.stderr
    assert not (tmp_path / "nowhere").exists()  # reading never creates a state directory
