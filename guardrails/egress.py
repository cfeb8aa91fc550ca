"""Where alerts may go: the webhook URL rule checked at start, and the connection guard
that re-checks every address at delivery and holds the delivery to one deadline.

A webhook URL comes from configuration or the environment, and the evaluator POSTs to it
with rollout details: a URL pointing at the cloud's metadata service or a private admin
endpoint would turn the alert into a request forgery (SSRF). So:

- https to any public address; http only to loopback or to a host in `[alerts] allow_hosts`
  (a name, an address or a network such as "10.0.0.0/8");
- never to a link-local or cloud-metadata address; never to a private, shared, reserved,
  multicast or unspecified one unless `allow_hosts` lists it;
- the name is resolved again at each connection and the checked address is the one
  connected to, so a name re-pointed after the start check (DNS rebinding) is refused;
- redirects are not followed (httpcore never follows them);
- connect, send and the whole answer share one deadline: a webhook that drips one byte a
  second cannot hold the delivery thread past it.

Through an egress proxy (`[alerts] proxy`, else HTTPS_PROXY / HTTP_PROXY and NO_PROXY from
the environment, as curl reads them) the proxy, an address the operator chose, is connected
to without the address rule; the proxy resolves and reaches the webhook (a CONNECT tunnel for
https, a forwarded request for http), so the webhook's name is checked where this host can
resolve it (at start and at each delivery) and the proxy's own egress rules do the rest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Cloud metadata services; all but the Alibaba one are inside ranges refused anyway.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


class AddressRefused(Exception):
    """The webhook's host is, or resolved to, an address alerts must not go to."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Destinations:
    """The allow list of `[alerts] allow_hosts`, and the address rule."""

    allow_hosts: tuple[str, ...] = ()

    def _allowed(self, host: str, ip: IPAddress | None) -> bool:
        for entry in self.allow_hosts:
            if entry.lower().rstrip(".") == host.lower().rstrip("."):
                return True
            network = "/" in entry or _is_ip(entry)
            if ip is not None and network and ip in ipaddress.ip_network(entry, strict=False):
                return True
        return False

    def refusal(self, host: str, address: str) -> str | None:
        """Why `host`, at `address`, must not get alerts; None if it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return None
        if ip in METADATA or ip.is_link_local:
            return f"{ip} is a link-local or cloud-metadata address"
        if ip.is_global and not ip.is_multicast:
            return None
        if self._allowed(host, ip):
            return None
        return f"{ip} is a private, reserved or unspecified address (not in [alerts] allow_hosts)"

    def check_url(self, key: str, url: str, resolver: Resolver | None = resolve) -> None:
        """Refuse `url` (ValueError naming `key`) unless alerts may be sent there. With a
        resolver, a host name is resolved now too; a name that does not resolve yet is left
        to the delivery-time check (the network may come up after the sidecar)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{key} must be an http(s):// URL with a host: {url[:40]!r}")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{key} has a bad port: {url[:60]!r}") from None
        literal = _is_ip(host)
        if parts.scheme == "http" and not (
            host.lower() == "localhost"
            or (literal and ipaddress.ip_address(host).is_loopback)
            or self._allowed(host, ipaddress.ip_address(host) if literal else None)
        ):
            raise ValueError(
                f"{key} must be https:// (http:// only to loopback or a host in "
                f"[alerts] allow_hosts): {url[:60]!r}"
            )
        addresses = [host] if literal else []
        if not literal and resolver is not None:
            try:
                addresses = resolver(host, port)
            except OSError:
                addresses = []
        for address in addresses:
            why = self.refusal(host, address)
            if why:
                raise ValueError(f"{key} host {host!r} refused: {why}")


@dataclass(frozen=True)
class ProxyRoute:
    """The proxy one webhook's deliveries go through. `url` has no credentials in it (it
    may be logged); they are in `auth`, sent as Proxy-Authorization."""

    url: str
    host: str
    port: int
    auth: tuple[str, str] | None = None

    def __str__(self) -> str:
        return self.url


NO_PROXY = "none"  # `[alerts] proxy = "none"`: never a proxy, whatever the environment says


def proxy_route(
    webhook: str, configured: str = "", environ: Mapping[str, str] | None = None
) -> ProxyRoute | None:
    """The proxy `webhook` goes through: `configured` (`[alerts] proxy`) if set, else the
    environment's HTTPS_PROXY (https) or HTTP_PROXY (http) unless NO_PROXY names the host.
    A malformed proxy URL is a ValueError naming where it came from."""
    if configured == NO_PROXY:
        return None
    target = urlsplit(webhook)
    if configured:
        return _parse_proxy(configured, "[alerts] proxy")
    env = dict(os.environ if environ is None else environ)
    proxies = {k[:-6].lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    url = proxies.get(target.scheme)
    if not url or _bypassed(target.hostname or "", proxies.get("no", "")):
        return None
    name = next(k for k in env if k.lower() == f"{target.scheme}_proxy" and env[k] == url)
    return _parse_proxy(url, name)


def _bypassed(host: str, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: `*`, or comma-separated names (each also matching its
    subdomains, a leading dot or not), addresses and networks (CIDR)."""
    host = host.lower().rstrip(".")
    ip = ipaddress.ip_address(host) if _is_ip(host) else None
    for entry in (e.strip().lower().rstrip(".") for e in no_proxy.split(",")):
        if entry == "*":
            return True
        if not entry:
            continue
        if ip is not None and ("/" in entry or _is_ip(entry)):
            with contextlib.suppress(ValueError):
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            continue
        name = entry.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _parse_proxy(url: str, key: str) -> ProxyRoute:
    parts = urlsplit(url if "://" in url else f"http://{url}")  # curl takes host:port too
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}"
        raise ValueError(f"{key} must be an http:// or https:// proxy URL with a host: {shown!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{key} has a bad port") from None
    host = parts.hostname
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return ProxyRoute(f"{parts.scheme}://{netloc}", host, port, auth)


def valid_entry(entry: str) -> bool:
    """An `allow_hosts` entry is a host name, an address, or a network with a prefix."""
    if "/" not in entry:
        return bool(entry.strip())
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the backend's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: GuardedBackend) -> None:
        self._inner, self._backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._backend.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, left), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, checking each address it connects to and holding every
    operation to `deadline` (a time.monotonic() value the caller sets per attempt)."""

    def __init__(
        self,
        destinations: Destinations,
        resolver: Resolver = resolve,
        proxy: ProxyRoute | None = None,
    ) -> None:
        self.destinations = destinations
        self.resolver = resolver
        self.proxy = proxy
        self.deadline = float("inf")
        self._inner = httpcore.SyncBackend()

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error("the delivery deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.resolver(host, port)
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from e
        proxy = self.proxy
        if proxy is None or (host, port) != (proxy.host, proxy.port):  # the proxy: chosen
            self.refuse(host, addresses)
        return _DeadlineStream(self._connect(addresses, port, timeout, socket_options), self)

    def refuse(self, host: str, addresses: Iterable[str]) -> None:
        for address in addresses:
            why = self.destinations.refusal(host, address)
            if why:
                raise AddressRefused(f"{host} resolved to a refused address: {why}")

    def check_proxied(self, url: str) -> None:
        """A webhook reached through the proxy: its name checked where this host resolves
        it (a name only the proxy can resolve is the proxy's to judge)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            addresses = [host] if _is_ip(host) else self.resolver(host, parts.port or 443)
        except OSError:
            return
        self.refuse(host, addresses)

    def _connect(
        self,
        addresses: Sequence[str],
        port: int,
        timeout: float | None,
        options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in addresses:  # the checked address itself, never the name again
            left = self.left(timeout, httpcore.ConnectTimeout)
            try:
                return self._inner.connect_tcp(address, port, left, socket_options=options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error
