"""The HTTP-client benchmark in smoke mode: both clients against a real server, at a rate
any client keeps. No timing is asserted: these runs share the machine with everything else."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvloop
from support.server import register, serving

from bench.bench_sim_client import run_client
from harness.scenario_models import model_path


@pytest.mark.parametrize("client", [pytest.param(c, id=c) for c in ("httpx", "aiohttp")])
def test_run_client_sends_the_simulator_payloads_and_reads_every_answer(
    tmp_path: Path, client: str
) -> None:
    state = tmp_path / "state"
    register(state, model_path("champion"))
    with serving(state) as server:
        run = uvloop.run(run_client(client, server.url, rate=50, seconds=1))
    assert run["client"] == client and run["errors"] == 0
    assert run["sent"] == run["answered"] == 50 and run["unsent"] == 0
    assert run["p50_ms"] is not None and run["cpu_us_per_request"] > 0
