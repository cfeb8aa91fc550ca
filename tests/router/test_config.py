"""Serving configuration: every mistake fails at construction with the exact key and what
it should be; flags override the file; the secrets come from the environment."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.config import (
    KNOWN_SECTIONS,
    Address,
    Config,
    ConfigError,
    ServeConfig,
    check_secrets,
    token_secret,
    typed_section,
)

SERVE_KEYS = sorted(ServeConfig.__dataclass_fields__)


def test_config_defaults_without_a_file() -> None:
    config = Config.load(None)
    assert config.serve == ServeConfig()
    assert (config.serve.host, config.serve.port, config.serve.workers) == ("127.0.0.1", 8000, 1)
    assert (config.bucket_width, config.n_buckets) == (0.01, 100)
    assert config.faults.challenger_delay_ms == 0.0
    assert not config.fleet.enabled
    assert config.raw == {}


def test_config_load_reads_a_toml_file_and_keeps_every_section(tmp_path: Path) -> None:
    path = tmp_path / "rampart.toml"
    path.write_text(
        "[serve]\nport = 9001\nchallenger_timeout_ms = 20\n"
        "[calibration]\nbucket_width = 0.02\n"
        "[rollout]\ntime_scale = 0.001\n"
    )
    config = Config.load(path)
    assert config.serve.port == 9001
    assert config.serve.challenger_timeout_ms == 20.0
    assert type(config.serve.challenger_timeout_ms) is float  # an int where a float is due
    assert (config.bucket_width, config.n_buckets) == (0.02, 50)
    assert config.raw["rollout"] == {"time_scale": 0.001}  # the evaluator's, kept for it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "config file {path} does not exist", id="missing"),
        pytest.param("[serve\nport = 1", "config file {path} is not valid TOML: ", id="bad-toml"),
    ],
)
def test_config_load_refuses_an_unreadable_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "rampart.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(e.value).startswith(message.format(path=path))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"sevre": {}},
            f"unknown config section(s) ['sevre']; known: {list(KNOWN_SECTIONS)}",
            id="unknown-section",
        ),
        pytest.param(
            {"serve": {"prot": 1}},
            f"unknown key(s) in [serve]: ['prot']; known: {SERVE_KEYS}",
            id="unknown-key",
        ),
        pytest.param(
            {"serve": {"port": "8000"}}, "[serve] port must be an int, got '8000'", id="string-int"
        ),
        pytest.param(
            {"serve": {"workers": True}}, "[serve] workers must be an int, got True", id="bool-int"
        ),
        pytest.param(
            {"serve": {"stale_after_s": "3"}},
            "[serve] stale_after_s must be a float, got '3'",
            id="string-float",
        ),
        pytest.param(
            {"serve": {"workers": 0}},
            "[serve] workers must be between 1 and max_workers (16), got 0",
            id="no-workers",
        ),
        pytest.param(
            {"serve": {"workers": 5, "max_workers": 4}},
            "[serve] workers must be between 1 and max_workers (4), got 5",
            id="too-many-workers",
        ),
        pytest.param(
            {"serve": {"stale_after_s": 0.1}},
            "[serve] stale_after_s must be longer than ticker_s",
            id="stale-before-a-tick",
        ),
        pytest.param(
            {"calibration": {"bucket_width": 0.7}},
            "[calibration] bucket_width must be in [0.001, 0.5], got 0.7",
            id="bucket-too-wide",
        ),
        pytest.param(
            {"calibration": {"width": 0.01}},
            "unknown key(s) in [calibration]: ['width']; known: ['bucket_width']",
            id="calibration-unknown-key",
        ),
        pytest.param(
            {"segments": {"browser": ["x"]}},
            "[segments] has unknown dimension(s) ['browser']",
            id="segments-unknown-dimension",
        ),
        pytest.param(
            {"serve": {"body_timeout_s": 0}},
            "[serve] body_timeout_s must be in (0, 3600], got 0.0",
            id="body-timeout",
        ),
        pytest.param(
            {"faults": {"challenger_delay_ms": -1.0}},
            "[faults] challenger_delay_ms must be in [0, 60000]",
            id="negative-delay",
        ),
        pytest.param(
            {"fleet": {"url": "http://redis:6379"}},
            "[fleet] url must be redis://host:port/db, rediss:// or unix://, "
            "got 'http://redis:6379'",
            id="fleet-url",
        ),
        pytest.param(
            {"fleet": {"name": "a b"}},
            "[fleet] name must be letters, digits, '-', '_' or '.': 'a b'",
            id="fleet-name",
        ),
        pytest.param(
            {"fleet": {"lease_s": 0.5}}, "[fleet] lease_s must be in [1, 60], got 0.5", id="lease"
        ),
        pytest.param({"serve": 3}, "[serve] must be a table, got 3", id="not-a-table"),
    ],
)
def test_config_refuses_mistakes_with_an_exact_message(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_dict(data)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "key", ["max_body_bytes", "max_batch", "max_request_id_chars", "max_events", "token_ttl_s"]
)
def test_config_serve_limits_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"serve": {key: 0}})
    assert str(e.value) == f"[serve] {key} must be positive, got 0"


@pytest.mark.parametrize(
    ("width", "buckets"),
    [
        pytest.param(0.01, 100, id="1%"),
        pytest.param(0.03, 34, id="3%-last-bucket-short"),
        pytest.param(0.5, 2, id="50%"),
    ],
)
def test_config_n_buckets_cover_zero_to_one(width: float, buckets: int) -> None:
    assert Config.from_dict({"calibration": {"bucket_width": width}}).n_buckets == buckets


def test_config_fleet_is_enabled_by_a_url() -> None:
    fleet = Config.from_dict({"fleet": {"url": "redis://localhost:6379/0"}}).fleet
    assert fleet.enabled and fleet.name == "default" and fleet.lease_s == 3.0


def test_config_with_overrides_puts_flags_over_the_file(tmp_path: Path) -> None:
    config = Config.from_dict({"serve": {"port": 9001, "workers": 2}})
    out = config.with_overrides(
        port=9100, workers=None, state_dir=str(tmp_path), fleet_url="redis://r:6379/1"
    )
    assert (out.serve.port, out.serve.workers) == (9100, 2)  # None: the file's value stays
    assert out.state_path == tmp_path.resolve()
    assert out.fleet.url == "redis://r:6379/1" and out.fleet.enabled
    assert config.serve.port == 9001  # the original is unchanged (frozen)


def test_config_with_overrides_checks_the_flags_as_the_file_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"workers must be between 1 and max_workers"):
        Config.from_dict({}).with_overrides(workers=99)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[serve\]: \['colour'\]"):
        Config.from_dict({}).with_overrides(colour="blue")


def test_config_state_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Config.from_dict({"serve": {"state_dir": "st"}}).state_path == tmp_path / "st"


@dataclass(frozen=True)
class _Section:
    number: int = 1
    ratio: float = 0.5
    label: str = "x"


def test_typed_section_uses_base_defaults_and_skips_fixed_keys() -> None:
    base = _Section(number=3, ratio=0.25)
    assert typed_section(_Section, "s", {"ratio": 1}, base=base, fixed=("number",)) == _Section(
        3, 1.0, "x"
    )
    with pytest.raises(ConfigError) as e:
        typed_section(_Section, "s", {"number": 4}, base=base, fixed=("number",))
    assert str(e.value) == "unknown key(s) in [s]: ['number']; known: ['label', 'ratio']"


# -- secrets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("secret", "fleet", "message"),
    [
        pytest.param("short", False, "RAMPART_TOKEN_SECRET must be at least 16", id="short"),
        pytest.param(None, True, "RAMPART_TOKEN_SECRET is required in fleet mode", id="fleet"),
    ],
)
def test_check_secrets_refuses_a_weak_or_missing_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str | None, fleet: bool, message: str
) -> None:
    monkeypatch.delenv("RAMPART_TOKEN_SECRET", raising=False)
    if secret is not None:
        monkeypatch.setenv("RAMPART_TOKEN_SECRET", secret)
    with pytest.raises(ConfigError, match=message):
        check_secrets(fleet)


@pytest.mark.parametrize(
    ("secret", "fleet"),
    [
        pytest.param(None, False, id="single-host-without"),
        pytest.param("s" * 16, True, id="fleet-with"),
    ],
)
def test_check_secrets_accepts(
    monkeypatch: pytest.MonkeyPatch, secret: str | None, fleet: bool
) -> None:
    monkeypatch.delenv("RAMPART_TOKEN_SECRET", raising=False)
    if secret is not None:
        monkeypatch.setenv("RAMPART_TOKEN_SECRET", secret)
    check_secrets(fleet)  # accepted: no ConfigError


def test_token_secret_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAMPART_TOKEN_SECRET", "0123456789abcdef")
    assert token_secret(tmp_path) == b"0123456789abcdef"
    assert not (tmp_path / "token.secret").exists()
    monkeypatch.setenv("RAMPART_TOKEN_SECRET", "too-short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        token_secret(tmp_path)


def test_token_secret_is_generated_once_and_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAMPART_TOKEN_SECRET", raising=False)
    state = tmp_path / "state"
    first = token_secret(state)
    assert len(first) == 64 and int(first, 16) >= 0  # 32 random bytes, hex
    assert token_secret(state) == first  # every worker and restart signs with the same key
    path = state / "token.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == ["token.secret"]  # no temporary file left


@pytest.mark.parametrize(
    ("value", "address"),
    [
        pytest.param("127.0.0.1:9000", Address(host="127.0.0.1", port=9000), id="ipv4"),
        pytest.param("[::1]:9000", Address(host="::1", port=9000), id="ipv6"),
        pytest.param("admin.local:1", Address(host="admin.local", port=1), id="name"),
        pytest.param("unix:/run/rampart.sock", Address(path="/run/rampart.sock"), id="unix"),
    ],
)
def test_config_admin_listen_takes_host_port_or_a_unix_socket(value: str, address: Address) -> None:
    serve = Config.from_dict({"serve": {"admin_listen": value}}).serve
    assert serve.admin_address == address
    assert str(address) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            "9000",
            "[serve] admin_listen must be host:port (port 1-65535) or unix:/path/to.sock, "
            "got '9000'",
            id="port-alone",
        ),
        pytest.param(
            "127.0.0.1:70000",
            "[serve] admin_listen must be host:port (port 1-65535) or unix:/path/to.sock, "
            "got '127.0.0.1:70000'",
            id="port-range",
        ),
        pytest.param(
            "unix:",
            "[serve] admin_listen unix: needs a socket path, like unix:/run/rampart.sock",
            id="unix-no-path",
        ),
        pytest.param(
            "127.0.0.1:8000",
            "[serve] admin_listen must differ from the main 127.0.0.1:8000",
            id="same-as-main",
        ),
    ],
)
def test_config_admin_listen_mistake_names_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"serve": {"admin_listen": value}})
    assert str(e.value) == message
    assert Config.load(None).serve.admin_address is None
