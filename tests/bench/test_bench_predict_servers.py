"""The /predict benchmark's rampart configs are ones `rampart serve` accepts (a config that
it refuses ends the benchmark's rollout section before it measures anything)."""

from __future__ import annotations

import tomllib

from bench.bench_predict_servers import QUICK_PHASES, rollout_config
from guardrails.policy import Policy
from router.config import Config


def test_rollout_config_is_accepted_with_quick_phases_and_a_loose_latency_bound() -> None:
    config = Config.from_dict(tomllib.loads(rollout_config()))
    policy = Policy.from_config(config)
    assert policy.guards.max_p99_ms == 1000.0
    for n in QUICK_PHASES:
        assert policy.min_s(n) < policy.max_s(n) and policy.min_s(n) <= 1.0
