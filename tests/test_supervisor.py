"""`rampart serve` before and around its processes: every configuration mistake is one line
naming the key and exit 2, before anything starts; an evaluator that cannot start is not
restarted forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.server import register_pair

SERVE_S = 180.0  # three evaluator starts with their back-off, on a slow machine


def _serve(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rampart.cli",
            "serve",
            "--state-dir",
            str(state),
            "--port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=SERVE_S,
        check=False,
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            '[alerts]\nslack_webhok = "https://hooks.example/x"\n',
            "rampart: unknown key(s) in [alerts]: ['slack_webhok']; known: ['allow_hosts', "
            "'backoff_s', 'deadline_s', 'max_attempts', 'max_backoff_s', 'proxy', 'slack_webhook', "
            "'timeout_s', 'webhook_url']",
            id="alerts-misspelled",
        ),
        pytest.param(
            '[alerts]\nwebhook_url = "hooks.example/x"\n',
            "rampart: [alerts] webhook_url must start with http(s)://: 'hooks.example/x'",
            id="alerts-url",
        ),
        pytest.param(
            '[faults]\nchallenger_delay_ms = "25"\n',
            "rampart: [faults] challenger_delay_ms must be a float, got '25'",
            id="faults-type",
        ),
        pytest.param(
            "[phases.2]\nsplit_bp = 100\n",
            "rampart: [phases.2] split_bp must grow phase by phase and stay <= 5000, got 100",
            id="phases",
        ),
        pytest.param(
            "[serve]\nworkers = 0\n",
            "rampart: [serve] workers must be between 1 and max_workers (16), got 0",
            id="serve",
        ),
        pytest.param(
            '[fleet]\nurl = "http://redis:6379"\n',
            "rampart: [fleet] url must be redis://host:port/db, rediss:// or unix://, "
            "got 'http://redis:6379'",
            id="fleet-url",
        ),
        pytest.param(
            "[servee]\nport = 1\n",
            "rampart: unknown config section(s) ['servee']; known: ['serve', 'segments', "
            "'calibration', 'faults', 'fleet', 'registry', 'paired', 'rollout', 'phases', "
            "'guardrails', 'alerts']",
            id="section",
        ),
        pytest.param(
            '[registry]\nbackend = "mlflow"\nmodel_name = "ctr"\n',
            "rampart: [registry] tracking_uri is required with backend = 'mlflow'",
            id="registry-mlflow-without-uri",
        ),
    ],
)
def test_serve_config_mistake_is_one_line_naming_the_key_and_exit_2(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "rampart.toml"
    config.write_text(toml)
    out = _serve(tmp_path / "state", "--config", str(config))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        pytest.param(
            {"RAMPART_TOKEN_SECRET": "short"},
            (),
            "rampart: RAMPART_TOKEN_SECRET must be at least 16 characters",
            id="short-secret",
        ),
        pytest.param(
            {},
            ("--fleet", "redis://127.0.0.1:1/0"),
            "rampart: RAMPART_TOKEN_SECRET is required in fleet mode: every host must verify "
            "the event tokens the others sign",
            id="fleet-without-secret",
        ),
    ],
)
def test_serve_secret_mistake_is_one_line_naming_the_variable_and_exit_2(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    base = {k: v for k, v in os.environ.items() if k != "RAMPART_TOKEN_SECRET"}
    out = _serve(tmp_path / "state", *args, env=base | env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message]


def test_supervisor_stops_an_evaluator_that_fails_at_start_the_same_way(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    (state / "rollouts.db").mkdir()  # the evaluator's journal cannot open: every start fails
    out = _serve(state)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        "rampart: the evaluator failed 3 times at start: "
        "OperationalError: unable to open database file; stopping"
    )


def test_serve_port_in_use_is_one_line_naming_the_key_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _serve(tmp_path / "state", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"rampart: [serve] host/port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
