"""Alert delivery against a real HTTP server on loopback (no mocked transport)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.net import free_port
from support.webhook import Hook, Reply, webhook

from guardrails.alerts import Alert, Alerter, Delivery, Outcome

FAST: dict[str, Any] = {"timeout_s": 1.0, "backoff_s": 0.01, "max_backoff_s": 0.05}


@pytest.fixture
def hook() -> Iterator[Hook]:
    with webhook() as h:
        yield h


def _alert(**changes: Any) -> Alert:
    values: dict[str, Any] = {
        "kind": "rollback",
        "rollout_id": "r-7",
        "phase": 2,
        "challenger": "ctr-mlp:3",
        "champion": "ctr-mlp:2",
        "guardrail": "calibration_ratio",
        "value": 1.52,
        "threshold": "0.85–1.15",
        "detail": "overall predicted/actual above band",
        "at": 1_700_000_000.0,
    }
    return Alert(**(values | changes))


def test_alerter_delivers_slack_and_webhook_payloads(hook: Hook) -> None:
    alerter = Alerter(f"{hook.url}/slack", f"{hook.url}/generic", **FAST)
    results: list[tuple[Delivery, str]] = []
    alerter.on_result(lambda d: results.append((d, threading.current_thread().name)))
    alerter.send(_alert())
    alerter.close(5)

    bodies = {r.path: r.body for r in hook.received}
    assert set(bodies) == {"/slack", "/generic"}
    slack = bodies["/slack"]
    assert slack["text"] == (
        ":rotating_light: Rampart rolled back ctr-mlp:3 in phase 2: "
        "calibration_ratio 1.52 (threshold 0.85–1.15)"
    )
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "context"]
    assert "Rolled back ctr-mlp:3" in slack["blocks"][0]["text"]["text"]
    fields = [f["text"] for f in slack["blocks"][1]["fields"]]
    assert fields == [
        "*Rollout*\nr-7",
        "*Phase*\n2",
        "*Guardrail*\ncalibration_ratio",
        "*Value*\n1.52",
        "*Threshold*\n0.85–1.15",
        "*Now serving 100%*\nctr-mlp:2",
    ]
    assert "2023-11-14 22:13:20 UTC" in slack["blocks"][2]["elements"][0]["text"]

    generic = bodies["/generic"]
    assert generic == {
        "kind": "rollback",
        "rollout_id": "r-7",
        "phase": 2,
        "challenger": "ctr-mlp:3",
        "champion": "ctr-mlp:2",
        "guardrail": "calibration_ratio",
        "value": 1.52,
        "threshold": "0.85–1.15",
        "detail": "overall predicted/actual above band",
        "at": 1_700_000_000.0,
        "summary": slack["text"],
    }
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (2, 0, 2)
    assert sorted(d.target for d, _ in results) == ["slack", "webhook"]
    assert all(d.outcome == Outcome.DELIVERED and d.attempts == 1 for d, _ in results)
    assert all(name != threading.current_thread().name for _, name in results)


def test_alert_slack_payload_escapes_mrkdwn() -> None:
    payload = _alert(guardrail="error_rate", value=0.004, threshold="< 0.1%").slack_payload()
    assert payload["text"].endswith("error_rate 0.004 (threshold &lt; 0.1%)")
    assert "*Threshold*\n&lt; 0.1%" in [f["text"] for f in payload["blocks"][1]["fields"]]


def test_alert_to_json_keeps_nan_value_valid_json() -> None:
    body = json.dumps(_alert(value=math.nan).to_json(), allow_nan=False)
    assert json.loads(body)["value"] == "nan"


@pytest.mark.parametrize("status", [pytest.param(500, id="500"), pytest.param(503, id="503")])
def test_alerter_retries_server_errors_until_delivered(hook: Hook, status: int) -> None:
    hook.replies.extend([Reply(status), Reply(status), Reply(200)])
    alerter = Alerter(None, hook.url, **FAST)
    alerter.send(_alert())
    alerter.close(5)
    assert len(hook.received) == 3
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (1, 0, 3)
    assert alerter.history[-1] == Delivery("rollback", "r-7", "webhook", Outcome.DELIVERED, 3, None)


def test_alerter_send_returns_while_a_delivery_is_in_flight(hook: Hook) -> None:
    release = threading.Event()
    hook.replies.append(Reply(hold=release))
    alerter = Alerter(None, hook.url, **FAST)
    alerter.send(_alert())
    hook.wait_for(1)  # the first delivery has reached the server, which holds its answer
    alerter.send(_alert(rollout_id="r-8"))
    # Had send waited for delivery, the held answer would have settled one by now.
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (0, 0, 1)
    release.set()
    alerter.close(5)
    assert alerter.delivered == 2


def test_alerter_gives_up_when_server_down() -> None:
    alerter = Alerter(f"http://127.0.0.1:{free_port()}/", None, max_attempts=4, **FAST)
    for i in range(3):
        alerter.send(_alert(rollout_id=f"r-{i}"))
    alerter.close(10)
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (0, 3, 12)
    last = alerter.history[-1]
    assert (last.target, last.outcome, last.attempts) == ("slack", Outcome.FAILED, 4)
    assert last.last_error is not None and "ConnectError" in last.last_error


def test_alerter_times_out_a_hanging_server(hook: Hook) -> None:
    hook.replies.extend([Reply(delay_s=3.0), Reply(delay_s=3.0)])
    alerter = Alerter(None, hook.url, timeout_s=0.2, max_attempts=2, backoff_s=0.01)
    t0 = time.monotonic()
    alerter.send(_alert())
    alerter.close(10)
    assert time.monotonic() - t0 < 2.0  # two 0.2 s timeouts, not the server's 3 s each
    assert len(hook.received) == 2
    last = alerter.history[-1]
    assert (last.outcome, last.attempts) == (Outcome.FAILED, 2)
    assert last.last_error is not None and "Timeout" in last.last_error


@pytest.mark.parametrize(
    "status",
    [pytest.param(400, id="400"), pytest.param(403, id="403"), pytest.param(404, id="404")],
)
def test_alerter_does_not_retry_client_errors(hook: Hook, status: int) -> None:
    hook.replies.append(Reply(status))
    alerter = Alerter(None, hook.url, **FAST)
    alerter.send(_alert())
    alerter.close(5)
    assert len(hook.received) == 1
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (0, 1, 1)
    last = alerter.history[-1]
    assert last.outcome == Outcome.REJECTED and last.last_error == f"HTTP {status}: ok"


@pytest.mark.parametrize(
    ("retry_after", "max_backoff_s", "low", "high"),
    [
        pytest.param("0.4", 30.0, 0.4, 2.0, id="honoured"),
        pytest.param("3600", 0.1, 0.1, 1.0, id="capped"),
    ],
)
def test_alerter_waits_for_retry_after_on_429(
    hook: Hook, retry_after: str, max_backoff_s: float, low: float, high: float
) -> None:
    hook.replies.extend([Reply(429, {"Retry-After": retry_after}), Reply(200)])
    alerter = Alerter(None, hook.url, backoff_s=0.001, max_backoff_s=max_backoff_s)
    alerter.send(_alert())
    alerter.close(5)
    assert alerter.delivered == 1 and alerter.attempts == 2
    gap = hook.received[1].at - hook.received[0].at
    assert low <= gap < high


def test_alerter_queue_overflow_drops_oldest(hook: Hook) -> None:
    release = threading.Event()
    hook.replies.append(Reply(hold=release))
    alerter = Alerter(None, hook.url, queue_limit=5, **FAST)
    alerter.send(_alert(rollout_id="r-0"))
    hook.wait_for(1)  # the worker is busy with r-0; the rest must queue
    for i in range(1, 9):
        alerter.send(_alert(rollout_id=f"r-{i}"))
    assert alerter.dropped == 3
    release.set()
    alerter.close(5)
    assert [r.body["rollout_id"] for r in hook.received] == [
        "r-0",
        "r-4",
        "r-5",
        "r-6",
        "r-7",
        "r-8",
    ]
    assert alerter.delivered == 6


def test_alerter_without_urls_records_not_configured() -> None:
    alerter = Alerter(None, None)
    alerter.send(_alert())
    alerter.close(1)
    assert alerter.history == [Delivery("rollback", "r-7", "-", Outcome.NOT_CONFIGURED, 0, None)]
    assert (alerter.delivered, alerter.failed, alerter.attempts) == (0, 0, 0)


def test_alerter_from_env_and_config_prefers_env_slack_url(
    hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAMPART_SLACK_WEBHOOK", f"{hook.url}/from-env")
    monkeypatch.setenv("RAMPART_ALERT_WEBHOOK", f"{hook.url}/generic-env")
    alerter = Alerter.from_env_and_config(
        {
            "slack_webhook": f"{hook.url}/from-config",
            "webhook_url": f"{hook.url}/generic",
            "backoff_s": 0,
        }
    )
    assert (alerter.timeout_s, alerter.max_attempts, alerter.backoff_s) == (2.0, 6, 0.0)
    alerter.send(_alert())
    alerter.close(5)
    assert sorted(r.path for r in hook.received) == ["/from-env", "/generic"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param(
            {"slak_webhook": "http://x"},
            r"unknown key(s) in [alerts]: ['slak_webhook']; known: ['allow_hosts', 'backoff_s', ",
            id="unknown-key",
        ),
        pytest.param({"timeout_s": "2"}, "[alerts] timeout_s must be a float, got '2'", id="type"),
        pytest.param(
            {"max_attempts": True}, "[alerts] max_attempts must be an int, got True", id="bool"
        ),
        pytest.param({"max_attempts": 0}, "[alerts] max_attempts must be >= 1, got 0", id="range"),
        pytest.param({"webhook_url": "hooks.slack.com/x"}, "must start with http", id="url"),
    ],
)
def test_alerter_from_env_and_config_rejects_bad_section(
    monkeypatch: pytest.MonkeyPatch, section: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("RAMPART_SLACK_WEBHOOK", raising=False)
    with pytest.raises(ValueError) as e:
        Alerter.from_env_and_config(section)
    assert message in str(e.value)


def test_alert_slack_payload_truncates_long_detail() -> None:
    context = _alert(detail="x" * 5000).slack_payload()["blocks"][2]["elements"][0]["text"]
    assert len(context) == 2000


def test_alerter_close_cuts_retries_short() -> None:
    alerter = Alerter(f"http://127.0.0.1:{free_port()}/", None, backoff_s=10, max_backoff_s=10)
    alerter.send(_alert())
    alerter.send(_alert(rollout_id="r-8"))
    t0 = time.monotonic()
    alerter.close(0.3)
    assert time.monotonic() - t0 < 2.0  # not the 10 s backoff
    assert (alerter.failed, alerter.dropped) == (1, 1)  # r-7 given up, queued r-8 dropped
    last = alerter.history[-1]
    assert last.last_error is not None and last.last_error.startswith("shut down after 1 attempt")
