"""The /predict benchmark's rampart configs are ones `rampart serve` accepts (a config that
it refuses ends the benchmark's rollout section before it measures anything), and its
events client sends what rampart accepts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support.server import STATE_S, wait_for

from bench.bench_predict_servers import (
    QUICK_PHASES,
    WrkEvents,
    paused,
    rollout_config,
    start_rampart,
)
from guardrails.policy import Policy
from router.config import Config


def test_rollout_config_is_accepted_with_quick_phases_and_a_loose_latency_bound() -> None:
    config = Config.from_dict(tomllib.loads(rollout_config()))
    policy = Policy.from_config(config)
    assert policy.guards.max_p99_ms == 1000.0
    for n in QUICK_PHASES:
        assert policy.min_s(n) < policy.max_s(n) and policy.min_s(n) <= 1.0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian: wrk)")
def test_wrk_events_show_the_top_scored_ad_of_each_slate_and_click_some(tmp_path: Path) -> None:
    """WrkEvents' Lua against a real server: every /predict (four ads) is answered, and its
    impression, and clicks, are accepted; none is rejected."""
    serve = start_rampart(tmp_path, "[serve]\nworkers = 1\n")
    try:

        def arm() -> dict[str, int]:
            return dict(serve.status()["arms"]["champion"])

        events = WrkEvents(serve.url, 200.0, tmp_path)
        try:
            wait_for(lambda: arm()["clicks"] >= 3, STATE_S, "clicks from WrkEvents")
        finally:
            events.stop()
        counts = arm()
        status = serve.status()
    finally:
        serve.stop()
    assert status.get("rejected") == {}
    assert counts["errors"] == 0
    # Four ads a request (the warm-up's 30 one-row requests aside), one impression a request
    # at most (the last answers may not have had theirs sent).
    assert counts["predictions"] - 30 == 4 * (counts["requests"] - 30)
    assert counts["requests"] - 30 - 2 <= counts["impressions"] <= counts["requests"] - 30
    assert counts["clicks"] < counts["impressions"]


def test_paused_stops_a_whole_process_tree_for_the_block_and_resumes_it() -> None:
    # A parent and its child, as `rampart serve` and its evaluator.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(c.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())

        def state(pid: int) -> str:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat[stat.rindex(")") + 2]

        with paused([parent.pid]):
            wait_for(lambda: state(parent.pid) == state(child) == "T", STATE_S, "both stopped")
        wait_for(lambda: "T" not in (state(parent.pid), state(child)), STATE_S, "both resumed")
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
