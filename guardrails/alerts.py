"""Rollout alerts to a Slack incoming webhook and/or a generic JSON webhook.

`Alerter.send` only enqueues; one daemon thread per target delivers with retries, so the
evaluator's rollback flip never waits on the network and a Slack outage never delays the other
webhook. Each attempt (connect, send, the whole answer) ends by `deadline_s`, and where alerts
may go at all is `guardrails.egress`.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple

import httpcore

from guardrails.egress import (
    AddressRefused,
    Destinations,
    GuardedBackend,
    ProxyRoute,
    Resolver,
    proxy_route,
    resolve,
    valid_entry,
)
from router.config import ConfigError, typed_section

QUEUE_LIMIT = 1000  # per target; an alert storm this large is a bug, not news
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class AlertsConfig:
    """The `[alerts]` section. The Slack URL is a secret: RAMPART_SLACK_WEBHOOK wins."""

    slack_webhook: str = ""
    webhook_url: str = ""
    timeout_s: float = 2.0  # any one connect, write or read
    deadline_s: float = 10.0  # one attempt whole: connect, send and the entire answer
    max_attempts: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    allow_hosts: list[str] = field(default_factory=list)  # private hosts or networks, or http
    proxy: str = ""  # egress proxy URL; "" takes HTTPS_PROXY/HTTP_PROXY/NO_PROXY; "none": never

    @classmethod
    def from_section(cls, values: dict[str, Any]) -> AlertsConfig:
        alerts: AlertsConfig = typed_section(cls, "alerts", values)
        alerts.check()
        return alerts

    def with_env(self) -> AlertsConfig:
        slack = os.environ.get("RAMPART_SLACK_WEBHOOK") or self.slack_webhook
        webhook = self.webhook_url or os.environ.get("RAMPART_ALERT_WEBHOOK", "")
        return replace(self, slack_webhook=slack, webhook_url=webhook)

    def check(self, resolver: Resolver | None = resolve) -> None:
        """Every key, and each URL against `guardrails.egress` (its host resolved now too)."""
        for entry in self.allow_hosts:
            if not isinstance(entry, str) or not entry or not valid_entry(entry):
                raise ConfigError(
                    f"[alerts] allow_hosts entries must be hosts or networks: {entry!r}"
                )
        for key, env in (
            ("slack_webhook", "RAMPART_SLACK_WEBHOOK"),
            ("webhook_url", "RAMPART_ALERT_WEBHOOK"),
        ):
            url = getattr(self, key)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"[alerts] {key} must start with http(s)://: {url[:40]!r}")
            name = env if url and os.environ.get(env) == url else f"[alerts] {key}"
            try:
                self.destinations.check_url(name, url, resolver) if url else None
                proxy_route(url, self.proxy) if url else None
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.timeout_s <= 0:
            raise ConfigError(f"[alerts] timeout_s must be > 0, got {self.timeout_s}")
        if self.deadline_s <= 0:
            raise ConfigError(f"[alerts] deadline_s must be > 0, got {self.deadline_s}")
        if self.max_attempts < 1:
            raise ConfigError(f"[alerts] max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ConfigError("[alerts] backoff_s must be in [0, max_backoff_s]")

    @property
    def destinations(self) -> Destinations:
        return Destinations(tuple(self.allow_hosts))


# kind -> (emoji, verb); other kinds are shown as they are.
_WORDING = {
    "rollback": (":rotating_light:", "rolled back"),
    "stopped": (":octagonal_sign:", "stopped"),
    "promoted": (":white_check_mark:", "promoted"),
    "paused": (":double_vertical_bar:", "paused"),
    "held": (":warning:", "held at 100% champion"),
}


class Outcome(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"  # retries exhausted, or shut down first
    REJECTED = "rejected"  # a 4xx other than 429: retrying cannot help (bad URL or payload)
    REFUSED = "refused"  # the host resolved to an address alerts may not go to (egress)
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True)
class Alert:
    kind: str
    rollout_id: str
    phase: int
    challenger: str
    champion: str
    guardrail: str | None = None
    value: float | str | None = None
    threshold: str | None = None
    detail: str = ""
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The generic webhook payload: the fields above plus `summary`, the one-line text."""
        out = asdict(self)
        # A NaN guardrail value (a broken model) would otherwise make the body invalid JSON.
        if isinstance(self.value, float) and not math.isfinite(self.value):
            out["value"] = str(self.value)
        return out | {"summary": self.summary()}

    def summary(self) -> str:
        emoji, verb = _WORDING.get(self.kind, (":information_source:", self.kind))
        line = f"{emoji} Rampart {verb} {self.challenger} in phase {self.phase}"
        if self.guardrail:
            line += f": {self.guardrail} {_fmt(self.value)}"
            line += f" (threshold {self.threshold})" if self.threshold else ""
        elif self.detail:
            line += f": {self.detail}"
        return line

    def slack_payload(self) -> dict[str, Any]:
        """Slack incoming-webhook JSON: a one-line `text` fallback, then header and fields."""
        emoji, verb = _WORDING.get(self.kind, (":information_source:", self.kind))
        title = f"{emoji} {verb.capitalize()} {self.challenger} (phase {self.phase})"
        # Whoever is paged at 2 AM first wants to know what serves traffic now.
        final = self.kind in ("rollback", "stopped", "promoted")
        serving = self.challenger if self.kind == "promoted" else self.champion
        fields = [
            ("Rollout", self.rollout_id),
            ("Phase", str(self.phase)),
            ("Guardrail", self.guardrail or "—"),
            ("Value", _fmt(self.value)),
            ("Threshold", self.threshold or "—"),
            ("Now serving 100%" if final else "Champion", serving),
        ]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        context = f"{self.detail} · {when}" if self.detail else when
        return {
            "text": _esc(self.summary()),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "fields": [_mrkdwn(f"*{k}*\n{v}") for k, v in fields]},
                {"type": "context", "elements": [_mrkdwn(context)]},
            ],
        }


def _fmt(value: float | str | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _esc(text: str) -> str:
    # Slack mrkdwn reads <...> as links and mentions; a threshold like "< 0.1%" must survive.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str) -> dict[str, str]:
    # Slack rejects (400) a field over 2000 characters, and the alert would be lost with it.
    return {"type": "mrkdwn", "text": _esc(text)[:2000]}


class Delivery(NamedTuple):
    kind: str
    rollout_id: str
    target: str  # "slack", "webhook", or "-" when nothing is configured
    outcome: Outcome
    attempts: int
    last_error: str | None


@dataclass
class _Target:
    name: str
    url: str
    payload: Callable[[Alert], dict[str, Any]]
    proxy: ProxyRoute | None = None
    queue: deque[Alert] = field(default_factory=deque)
    busy: bool = False
    thread: threading.Thread | None = None


class Alerter:
    """Background delivery with counters (`delivered`, `failed`, `attempts`, `dropped`,
    `refused`: deliveries stopped because the host resolved to a forbidden address)."""

    def __init__(
        self,
        slack_url: str | None,
        webhook_url: str | None,
        *,
        timeout_s: float = 2.0,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        queue_limit: int = QUEUE_LIMIT,
        deadline_s: float = 10.0,
        allow_hosts: tuple[str, ...] = (),
        resolver: Resolver = resolve,
        proxy: str = "",
    ) -> None:
        self.destinations = Destinations(allow_hosts)
        routes: dict[str, ProxyRoute | None] = {}
        for url in (slack_url, webhook_url):
            try:  # names are resolved at delivery; AlertsConfig.check resolves them at start
                if url:
                    self.destinations.check_url("[alerts] webhook URL", url, None)
                    routes[url] = proxy_route(url, proxy)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if (
            timeout_s <= 0
            or deadline_s <= 0
            or max_attempts < 1
            or not 0 <= backoff_s <= max_backoff_s
        ):
            raise ConfigError(
                "[alerts] need timeout_s > 0, deadline_s > 0, max_attempts >= 1, "
                "0 <= backoff_s <= max_backoff_s"
            )
        self.timeout_s, self.deadline_s, self.max_attempts = timeout_s, deadline_s, max_attempts
        self.backoff_s, self.max_backoff_s, self.queue_limit = backoff_s, max_backoff_s, queue_limit
        self.resolver = resolver
        self.delivered = self.failed = self.attempts = self.dropped = self.refused = 0
        self._history: deque[Delivery] = deque(maxlen=HISTORY_LIMIT)
        self._callback: Callable[[Delivery], None] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._targets = [
            _Target(name, url, payload, routes[url])
            for name, url, payload in [
                ("slack", slack_url, Alert.slack_payload),
                ("webhook", webhook_url, Alert.to_json),
            ]
            if url
        ]
        for t in self._targets:
            t.thread = threading.Thread(target=self._run, args=(t,), name=f"alerts-{t.name}")
            t.thread.daemon = True  # a stuck webhook must not keep the evaluator from exiting
            t.thread.start()

    @classmethod
    def from_config(cls, alerts: AlertsConfig) -> Alerter:
        a = alerts.with_env()
        a.check()
        return cls(
            a.slack_webhook or None,
            a.webhook_url or None,
            timeout_s=a.timeout_s,
            max_attempts=a.max_attempts,
            backoff_s=a.backoff_s,
            max_backoff_s=a.max_backoff_s,
            deadline_s=a.deadline_s,
            allow_hosts=tuple(a.allow_hosts),
            proxy=a.proxy,
        )

    @classmethod
    def from_env_and_config(cls, alerts_section: dict[str, Any]) -> Alerter:
        """The `[alerts]` config section as TOML gave it, plus the environment."""
        return cls.from_config(AlertsConfig.from_section(alerts_section))

    @property
    def history(self) -> list[Delivery]:
        """The last `HISTORY_LIMIT` settled deliveries, oldest first."""
        with self._cond:
            return list(self._history)

    def on_result(self, callback: Callable[[Delivery], None]) -> None:
        """Have `callback(delivery)` called, from a worker thread, as each delivery settles."""
        self._callback = callback

    def send(self, alert: Alert) -> None:
        """Queue `alert` for every target and return at once: no I/O, never raises."""
        with self._cond:
            if not self._targets:
                self._history.append(
                    Delivery(alert.kind, alert.rollout_id, "-", Outcome.NOT_CONFIGURED, 0, None)
                )
            for t in self._targets:
                if self._stop.is_set():
                    self.dropped += 1
                    continue
                if len(t.queue) >= self.queue_limit:
                    t.queue.popleft()  # the newest alert says the most about now
                    self.dropped += 1
                t.queue.append(alert)
            self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within `timeout_s`, then stop; the rest counts as dropped."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.wait_for(
                lambda: not any(t.queue or t.busy for t in self._targets), timeout_s
            )
            self._stop.set()  # also cuts a backoff sleep short
            for t in self._targets:
                self.dropped += len(t.queue)
                t.queue.clear()
            self._cond.notify_all()
        in_flight = min(self.timeout_s, self.deadline_s)
        for t in self._targets:
            if t.thread is not None:  # a request in flight may need its own timeout to end
                t.thread.join(max(0.0, deadline - time.monotonic()) + in_flight)

    def _run(self, target: _Target) -> None:
        route = target.proxy
        backend = GuardedBackend(self.destinations, self.resolver, route)
        proxy = None if route is None else httpcore.Proxy(route.url, auth=route.auth)
        with httpcore.ConnectionPool(network_backend=backend, retries=0, proxy=proxy) as pool:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: bool(target.queue) or self._stop.is_set())
                    if self._stop.is_set():
                        return
                    alert = target.queue.popleft()
                    target.busy = True
                try:
                    delivery = self._deliver(pool, backend, target, alert)
                except Exception as e:  # a malformed alert must not kill the worker
                    delivery = Delivery(
                        alert.kind, alert.rollout_id, target.name, Outcome.FAILED, 0, repr(e)
                    )
                with self._cond:
                    if delivery.outcome is Outcome.DELIVERED:
                        self.delivered += 1
                    else:
                        self.failed += 1
                        self.refused += delivery.outcome is Outcome.REFUSED
                    self._history.append(delivery)
                with contextlib.suppress(Exception):  # the evaluator's hook must not stop alerts
                    if self._callback is not None:
                        self._callback(delivery)
                with self._cond:
                    target.busy = False
                    self._cond.notify_all()

    def _deliver(
        self,
        pool: httpcore.ConnectionPool,
        backend: GuardedBackend,
        target: _Target,
        alert: Alert,
    ) -> Delivery:
        body = json.dumps(target.payload(alert)).encode()
        outcome, error, attempt = Outcome.FAILED, None, 0
        t = self.timeout_s
        timeouts = {"connect": t, "read": t, "write": t, "pool": t}
        while attempt < self.max_attempts and not self._stop.is_set():
            attempt += 1
            with self._cond:
                self.attempts += 1
            wait = None
            backend.deadline = time.monotonic() + self.deadline_s
            try:
                if target.proxy is not None:
                    backend.check_proxied(target.url)
                r = pool.request(
                    "POST",
                    target.url,
                    headers=_HEADERS,
                    content=body,
                    extensions={"timeout": timeouts},
                )
            except AddressRefused as e:  # the name now points somewhere forbidden: stop
                outcome, error = Outcome.REFUSED, str(e)
                break
            except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
                error = f"{type(e).__name__}: {e}"  # refused, reset, timed out: try again
                if time.monotonic() >= backend.deadline:
                    error = (
                        f"{type(e).__name__}: the {self.deadline_s:g} s delivery deadline passed"
                    )
            else:
                if 200 <= r.status < 300:
                    outcome, error = Outcome.DELIVERED, None
                    break
                error = f"HTTP {r.status}: {r.content[:200].decode('utf-8', 'replace')}"
                if r.status != 429 and r.status < 500:
                    outcome = Outcome.REJECTED
                    break
                wait = _retry_after(_header(r.headers, b"retry-after"))
            if attempt < self.max_attempts:
                if wait is None:  # exponential, jittered so sidecars that failed together spread
                    wait = self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                self._stop.wait(min(wait, self.max_backoff_s))
        if outcome is Outcome.FAILED and attempt < self.max_attempts:
            error = f"shut down after {attempt} attempt(s); last error: {error}"
        return Delivery(alert.kind, alert.rollout_id, target.name, outcome, attempt, error)


_HEADERS = [(b"content-type", b"application/json"), (b"user-agent", b"rampart-alerts")]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def _retry_after(header: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
