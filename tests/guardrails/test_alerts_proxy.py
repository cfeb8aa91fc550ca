"""Alerts through an egress proxy: a real proxy on loopback (tests/support/proxy.py)
tunnelling https and forwarding http, and a real webhook receiver behind it."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support.proxy import Proxy, egress_proxy
from support.webhook import Hook, webhook

from guardrails.alerts import Alert, Alerter, AlertsConfig, Outcome
from guardrails.egress import proxy_route
from router.config import ConfigError

ALERT = Alert(kind="rollback", rollout_id="r-1", phase=1, challenger="ctr:2", champion="ctr:1")


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with egress_proxy() as p:
        yield p


@pytest.fixture
def tls_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    """An https receiver with a certificate from a throwaway CA that this process trusts
    (SSL_CERT_FILE, which the default TLS context reads)."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    with webhook(tls=server_tls) as hook:
        yield hook


def _delivered(alerter: Alerter) -> list[Outcome]:
    alerter.close(10)
    return [d.outcome for d in alerter.history]


def test_https_webhook_goes_through_the_https_proxy_of_the_environment(
    proxy: Proxy, tls_hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with credentials: a CONNECT tunnel to the webhook, authenticated, and
    the alert delivered through it. Without proxy support the alerter connected directly."""
    user_url = proxy.url.replace("http://", "http://alerts:s%40cret@")
    monkeypatch.setenv("HTTPS_PROXY", user_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    alerter = Alerter(f"{tls_hook.url}/slack", None)
    alerter.send(ALERT)
    tls_hook.wait_for(1)
    assert _delivered(alerter) == [Outcome.DELIVERED]
    seen = proxy.wait_for(1)
    host_port = tls_hook.url.removeprefix("https://")
    assert [(s.method, s.target) for s in seen] == [("CONNECT", host_port)]
    assert seen[0].auth == "Basic " + base64.b64encode(b"alerts:s@cret").decode()


def test_http_webhook_is_forwarded_by_the_configured_proxy(proxy: Proxy) -> None:
    with webhook() as hook:
        alerter = Alerter(None, f"{hook.url}/hook", proxy=proxy.url)
        alerter.send(ALERT)
        assert hook.wait_for(1)[0].path == "/hook"
        assert _delivered(alerter) == [Outcome.DELIVERED]
    assert [(s.method, s.target) for s in proxy.wait_for(1)] == [("POST", f"{hook.url}/hook")]


def test_no_proxy_and_proxy_none_connect_directly(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with webhook() as hook:
        monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
        direct = Alerter(None, f"{hook.url}/a")
        monkeypatch.delenv("NO_PROXY")
        never = Alerter(None, f"{hook.url}/b", proxy="none")
        for alerter in (direct, never):
            alerter.send(ALERT)
        hook.wait_for(2)
        assert _delivered(direct) == _delivered(never) == [Outcome.DELIVERED]
    assert proxy.seen == []


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        ("*", "hooks.slack.com", True),
        ("slack.com", "hooks.slack.com", True),
        (".slack.com", "hooks.slack.com", True),
        ("slack.com", "notslack.com", False),
        ("10.0.0.0/8, 127.0.0.1", "10.1.2.3", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("", "hooks.slack.com", False),
    ],
)
def test_no_proxy_matches_as_curl_does(no_proxy: str, host: str, bypassed: bool) -> None:
    env = {"https_proxy": "http://proxy:3128", "NO_PROXY": no_proxy}
    route = proxy_route(f"https://{host}/x", environ=env)
    assert (route is None) == bypassed


def test_a_malformed_proxy_is_one_line_naming_where_it_came_from() -> None:
    with pytest.raises(ValueError, match=r"^HTTPS_PROXY must be an http:// or https:// proxy"):
        proxy_route("https://hooks.slack.com/x", environ={"HTTPS_PROXY": "socks5://p:1080"})
    config = AlertsConfig(slack_webhook="https://hooks.slack.com/x", proxy="ftp://p")
    with pytest.raises(ConfigError, match=r"^\[alerts\] proxy must be an http"):
        config.check(resolver=None)


def test_proxy_credentials_never_reach_the_route_url() -> None:
    route = proxy_route("https://h.example/x", "http://u:topsecret@proxy.internal:3128")
    assert route is not None and "topsecret" not in str(route) and route.auth == ("u", "topsecret")
