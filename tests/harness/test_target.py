from __future__ import annotations

import errno

import pytest

from harness.target import TargetNotAllowed, check_loopback, error_kind, parse_url


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="v4"),
        pytest.param("127.8.9.1", id="127/8"),
        pytest.param("localhost", id="localhost"),
        pytest.param("[::1]", id="v6"),
    ],
)
def test_check_loopback_accepts_loopback(host: str) -> None:
    check_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("10.0.0.1", id="private"),
        pytest.param("example.com", id="name"),
        pytest.param("[2001:db8::1]", id="v6"),
    ],
)
def test_check_loopback_refuses_anything_else(host: str) -> None:
    with pytest.raises(TargetNotAllowed, match="loopback"):
        check_loopback(host)


def test_parse_url_splits_and_refuses_non_http() -> None:
    assert parse_url("http://127.0.0.1:8000/predict?x=1") == ("127.0.0.1", 8000, "/predict?x=1")
    with pytest.raises(ValueError, match="expected http://"):
        parse_url("https://127.0.0.1/")


class _WrappedOSError(OSError):
    """What an HTTP client raises around the OS error (aiohttp's ClientOSError)."""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        pytest.param(ConnectionRefusedError(), "refused", id="refused"),
        pytest.param(ConnectionResetError(), "reset", id="reset"),
        pytest.param(BrokenPipeError(), "broken_pipe", id="broken-pipe"),
        pytest.param(TimeoutError(), "timeout", id="timeout"),
        pytest.param(_WrappedOSError(errno.ECONNRESET, "reset"), "reset", id="wrapped-errno"),
        pytest.param(ValueError("x"), "ValueError", id="other"),
    ],
)
def test_error_kind_names_connection_failures(exc: BaseException, kind: str) -> None:
    assert error_kind(exc) == kind
