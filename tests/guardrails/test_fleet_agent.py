"""A fleet host's agent in this process, against a real `redis-server`, for the faults an
end-to-end test can only hit by chance: the store dying between two calls of one tick."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.redis_server import RedisServer, needs_redis, running_redis

from guardrails import evaluator as evaluator_mod
from guardrails.alerts import Alerter
from guardrails.fleet import HostAgent
from guardrails.fleet_store import FleetStore
from router.config import Config
from router.control import ControlWriter

pytestmark = needs_redis


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def _agent(tmp_path: Path, redis: RedisServer) -> HostAgent:
    config = Config.from_dict(
        {
            "serve": {"state_dir": str(tmp_path / "state")},
            "fleet": {"url": redis.url, "name": "agent", "host_id": "a", "lease_s": 2.0},
        }
    )
    shm = evaluator_mod.prepare(config)
    control = ControlWriter(shm)
    control.claim(os.getpid())
    store = FleetStore(config.fleet.url, config.fleet.name)
    return HostAgent(config, shm, control, store, host_id="a", alerter=Alerter(None, None))


@pytest.mark.parametrize("call", ["leader", "hosts", "save_state"])
def test_store_dying_mid_tick_keeps_the_agent_ticking(
    tmp_path: Path, redis: RedisServer, call: str
) -> None:
    """The store answers the tick's first round trip, then dies before a later call of the
    same tick (status publishing): the agent keeps the last decision, as when the first
    call fails, instead of raising out of its tick (which restarted the evaluator, and a
    fresh evaluator with no store serves the champion alone)."""
    agent = _agent(tmp_path, redis)
    try:
        agent.tick()
        assert agent.leader is not None and agent.unreachable_since is None
        real = getattr(agent.store, call)

        def dies_first(*args: Any, **kwargs: Any) -> Any:
            redis.kill()
            return real(*args, **kwargs)

        setattr(agent.store, call, dies_first)
        agent.tick()  # raised StoreUnavailable out of the tick before the fix
        assert agent.unreachable_since is not None
        assert agent.leader is None  # only a leader that can write decides
        agent.tick()  # and the next ticks go on with the store down
    finally:
        agent.close()
