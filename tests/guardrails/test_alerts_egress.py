"""Where alerts may go and how long one may take: the URL rule at start (no SSRF), the
address re-checked at delivery (DNS rebinding), redirects not followed, and one deadline
for a whole attempt against a real webhook on loopback that drips its answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.webhook import Hook, Reply, webhook
from test_alerts import _alert
from test_evaluator import _rig

from guardrails.alerts import Alerter, AlertsConfig, Outcome
from router.config import ConfigError


@pytest.fixture
def hook() -> Iterator[Hook]:
    with webhook() as h:
        yield h


def _no_dns(host: str, port: int) -> list[str]:
    raise OSError(f"no resolver for {host} in this test")


# -- a webhook that drips ---------------------------------------------------------------------
def test_alerter_counts_a_dripping_webhook_failed_at_the_deadline(hook: Hook) -> None:
    # One byte a second: every read arrives well within timeout_s, so only the deadline
    # on the whole attempt can end it (the answer is ~40 bytes: ~40 s per attempt).
    hook.replies.extend([Reply(drip_s=1.0), Reply(drip_s=1.0)])
    alerter = Alerter(None, hook.url, timeout_s=2.0, deadline_s=1.5, max_attempts=2, backoff_s=0)
    t0 = time.monotonic()
    alerter.send(_alert())
    alerter.close(10)
    assert time.monotonic() - t0 < 6.0  # two 1.5 s attempts, not two 40 s drips
    assert len(hook.received) == 2  # retried, and the retries are bounded
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (0, 1, 2)
    last = alerter.history[-1]
    assert (last.outcome, last.attempts) == (Outcome.FAILED, 2)
    assert last.last_error is not None and "deadline" in last.last_error


def test_alerter_send_returns_at_once_while_a_webhook_drips(hook: Hook) -> None:
    hook.replies.append(Reply(drip_s=1.0))
    alerter = Alerter(None, hook.url, deadline_s=30.0, max_attempts=1)
    alerter.send(_alert())
    hook.wait_for(1)  # the delivery is in flight, the answer dripping
    t0 = time.monotonic()
    for i in range(100):
        alerter.send(_alert(rollout_id=f"r-{i}"))
    assert time.monotonic() - t0 < 0.5
    alerter.close(0.1)


def test_rollback_flips_in_its_tick_while_the_webhook_drips(hook: Hook, tmp_path: Path) -> None:
    hook.replies.extend(Reply(drip_s=1.0) for _ in range(10))
    r = _rig(tmp_path, Alerter(f"{hook.url}/hook", None, deadline_s=60.0, max_attempts=1))
    try:
        r.start()
        r.run(60, challenger={"errors": 5})
        assert r.evaluator.rollout is not None and r.evaluator.rollout.state == "rolled_back"
        assert r.split() == 0
        hook.wait_for(1)  # the alert is still dripping in...
        r.step()
        assert r.evaluator.tick_seconds < 1.0  # ...and the ticks go on, unhindered
    finally:
        r.evaluator.alerter.close(0.1)
        r.evaluator.close()


# -- redirects and rebinding ------------------------------------------------------------------
def test_alerter_does_not_follow_a_redirect(hook: Hook) -> None:
    hook.replies.append(Reply(302, {"location": "http://169.254.169.254/latest/meta-data/"}))
    alerter = Alerter(None, hook.url, backoff_s=0)
    alerter.send(_alert())
    alerter.close(5)
    assert len(hook.received) == 1
    assert alerter.history[-1].outcome is Outcome.REJECTED
    assert alerter.history[-1].last_error is not None
    assert alerter.history[-1].last_error.startswith("HTTP 302")


def test_alerter_refuses_a_name_rebound_to_the_metadata_address(hook: Hook) -> None:
    # Real DNS cannot be re-pointed from a test: the resolver is the seam. The first
    # answer is loopback (the real receiver); then the name points at the metadata service.
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    port = hook.url.rsplit(":", 1)[1]
    results: list[Any] = []
    alerter = Alerter(
        None,
        f"http://alerts.test:{port}/hook",
        allow_hosts=("alerts.test",),
        resolver=lambda host, port: next(answers),
        backoff_s=0,
    )
    alerter.on_result(results.append)
    alerter.send(_alert(rollout_id="r-1"))
    alerter.send(_alert(rollout_id="r-2"))
    alerter.close(5)
    assert [x.path for x in hook.received] == ["/hook"]  # nothing went to the new address
    assert [d.outcome for d in results] == [Outcome.DELIVERED, Outcome.REFUSED]
    assert results[1].attempts == 1  # refused, not retried
    assert results[1].last_error is not None and "169.254.169.254" in results[1].last_error
    assert (alerter.delivered, alerter.failed, alerter.refused) == (1, 1, 1)


# -- the URL rule at start --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param(
            {"webhook_url": "http://169.254.169.254/latest/meta-data/"},
            "[alerts] webhook_url must be https://",
            id="http-metadata",
        ),
        pytest.param(
            {"webhook_url": "https://169.254.169.254/hook"},
            "[alerts] webhook_url host '169.254.169.254' refused: 169.254.169.254 is a "
            "link-local or cloud-metadata address",
            id="https-metadata",
        ),
        pytest.param(
            {"webhook_url": "https://[fd00:ec2::254]/hook", "allow_hosts": ["fd00::/8"]},
            "link-local or cloud-metadata address",
            id="metadata-v6-even-if-allowed",
        ),
        pytest.param(
            {"webhook_url": "https://[::ffff:169.254.169.254]/hook"},
            "link-local or cloud-metadata address",
            id="v4-mapped",
        ),
        pytest.param(
            {"webhook_url": "https://10.1.2.3/hook"}, "private, reserved or unspecified", id="10/8"
        ),
        pytest.param(
            {"webhook_url": "https://0.0.0.0:8080/"}, "private, reserved or unspecified", id="any"
        ),
        pytest.param(
            {"webhook_url": "http://hooks.example.com/x"},
            "[alerts] webhook_url must be https://",
            id="http-public",
        ),
        pytest.param(
            {"slack_webhook": "https://metadata.test/x"},
            "[alerts] slack_webhook host 'metadata.test' refused: 169.254.169.254",
            id="name-resolves-to-metadata",
        ),
        pytest.param(
            {"allow_hosts": ["10.0.0.0/33"]}, "[alerts] allow_hosts entries", id="bad-network"
        ),
        pytest.param({"deadline_s": 0.0}, "[alerts] deadline_s must be > 0", id="deadline"),
    ],
)
def test_alerts_config_refuses_a_forbidden_webhook(
    monkeypatch: pytest.MonkeyPatch, section: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("RAMPART_SLACK_WEBHOOK", raising=False)
    monkeypatch.delenv("RAMPART_ALERT_WEBHOOK", raising=False)
    metadata_dns = {"metadata.test": ["169.254.169.254"]}
    with pytest.raises(ConfigError) as e:
        AlertsConfig.from_section(section).check(lambda host, port: metadata_dns[host])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "section",
    [
        pytest.param({"webhook_url": "http://127.0.0.1:9/hook"}, id="loopback-http"),
        pytest.param({"webhook_url": "http://[::1]:9/hook"}, id="loopback-v6"),
        pytest.param({"webhook_url": "http://localhost:9/hook"}, id="localhost"),
        pytest.param({"webhook_url": "https://hooks.slack.com/services/T/B/x"}, id="public"),
        pytest.param(
            {"webhook_url": "https://10.1.2.3/hook", "allow_hosts": ["10.0.0.0/8"]},
            id="allowed-network",
        ),
        pytest.param(
            {"webhook_url": "http://alerts.internal:8080/", "allow_hosts": ["alerts.internal"]},
            id="allowed-http-host",
        ),
    ],
)
def test_alerts_config_accepts_allowed_webhooks(
    monkeypatch: pytest.MonkeyPatch, section: dict[str, Any]
) -> None:
    monkeypatch.delenv("RAMPART_SLACK_WEBHOOK", raising=False)
    dns = {"hooks.slack.com": ["3.120.1.1"], "alerts.internal": ["10.9.8.7"]}
    AlertsConfig.from_section(section).check(lambda host, port: dns.get(host) or _no_dns(host, 0))


def test_serve_refuses_a_metadata_slack_webhook_from_the_environment(tmp_path: Path) -> None:
    env = dict(os.environ, RAMPART_SLACK_WEBHOOK="http://169.254.169.254/latest/meta-data/")
    out = subprocess.run(
        [sys.executable, "-m", "rampart.cli", "serve", "--state-dir", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rampart: RAMPART_SLACK_WEBHOOK must be https:// (http:// only to loopback or a host "
        "in [alerts] allow_hosts): 'http://169.254.169.254/latest/meta-data/'"
    ]
    assert not (tmp_path / "rampart.shm").exists()  # refused before anything started


def test_alerter_constructor_refuses_a_metadata_address() -> None:
    with pytest.raises(ConfigError, match="link-local or cloud-metadata"):
        Alerter(None, "https://169.254.169.254/hook")
