"""SimConfig (harness/simulator_config.py): loopback targets only, and settings checked at
construction with an exact message."""

from __future__ import annotations

from typing import Any

import pytest

from harness import simulator
from harness.simulator_config import SimConfig
from harness.target import TargetNotAllowed


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://10.0.0.1:8000", id="private"),
        pytest.param("http://example.com", id="name"),
        pytest.param("http://[2001:db8::1]:8000", id="ipv6"),
    ],
)
def test_sim_config_refuses_non_loopback_url(url: str) -> None:
    with pytest.raises(TargetNotAllowed, match="loopback"):
        SimConfig(url, rate=10, duration_s=1)
    assert simulator.main(["--url", url, "--rate", "10", "--seconds", "1"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"rate": 0}, "rate must be > 0", id="rate"),
        pytest.param({"candidates": 0}, "candidates must be 1..256", id="candidates"),
        pytest.param({"mix": {"device_type": {"phone": 1}}}, "unknown device_type", id="mix"),
    ],
)
def test_sim_config_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"rate": 10, "duration_s": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        SimConfig("http://127.0.0.1:8000", **settings)


def test_sim_config_also_adds_fleet_hosts_each_on_loopback() -> None:
    config = SimConfig(
        "http://127.0.0.1:8000/", rate=10, duration_s=1, also=("http://[::1]:8001/fleet/",)
    )
    assert config.origins == ["http://127.0.0.1:8000", "http://[::1]:8001/fleet"]
    with pytest.raises(TargetNotAllowed, match="loopback"):
        SimConfig("http://127.0.0.1:8000", rate=10, duration_s=1, also=("http://10.0.0.2:8000",))
