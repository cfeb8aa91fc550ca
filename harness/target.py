"""What the traffic tools may drive, and how they name a failed connection.

The simulator and `bench.loadgen` send thousands of requests a second: they refuse any target
that is not on loopback, so a typo cannot aim them at a real host.
"""

from __future__ import annotations

import errno
import ipaddress
from urllib.parse import urlsplit


class TargetNotAllowed(ValueError):
    """The URL is not on loopback."""


def check_loopback(host: str) -> None:
    """Refuse anything but 127.0.0.0/8, ::1 and localhost; names are not resolved."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise TargetNotAllowed(
            f"refusing to send traffic to {host!r}: the load tools only target loopback "
            "(127.0.0.0/8, ::1 or localhost)"
        )


def parse_url(url: str) -> tuple[str, int, str]:
    """`http://127.0.0.1:8000/predict` → (host, port, path), loopback only."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST[:PORT]/PATH")
    check_loopback(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


_KINDS: dict[type[BaseException], str] = {
    ConnectionRefusedError: "refused",
    ConnectionResetError: "reset",
    BrokenPipeError: "broken_pipe",
    TimeoutError: "timeout",
}
# Clients that wrap the OS error in their own OSError subclass keep its errno.
_ERRNOS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "broken_pipe",
    errno.ETIMEDOUT: "timeout",
}


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a connection failure, for error counts."""
    for cls in type(exc).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return _ERRNOS[exc.errno]
    return type(exc).__name__
