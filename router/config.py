"""Serving configuration: a TOML file plus command-line flags.

Construction is cheap and only validates; mistakes fail here, at start, with the
exact key and what it should be.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from router.segments import SegmentSpace

# [rollout], [phases.N], [guardrails] and [alerts] belong to the evaluator: it parses them
# (guardrails.settings), and `rampart serve` does so before anything starts.
KNOWN_SECTIONS = (
    "serve",
    "segments",
    "calibration",
    "faults",
    "fleet",
    "registry",
    "paired",
    "rollout",
    "phases",
    "guardrails",
    "alerts",
)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_workers: int = 16  # slabs in the state file; more workers than this cannot start
    state_dir: str = "state"
    max_body_bytes: int = 1 << 20
    max_batch: int = 256
    max_request_id_chars: int = 128
    max_events: int = 1000
    token_ttl_s: int = 3600
    events_per_s: int = 2000  # the event rate the exactly-once filter is sized for (router.dedupe)
    challenger_timeout_ms: float = 50.0
    body_timeout_s: float = 10.0  # headers to the body's last byte, else 408 (router.body_deadline)
    stale_after_s: float = 3.0
    ticker_s: float = 0.1
    evaluator_cpu: int = -1  # pin the evaluator to this CPU, away from the workers (-1: don't)
    # A whole /predict or /events answered without an ASGI task, in one write (router.http_fast)
    answer_in_place: bool = True
    # Admin endpoints on their own listener, "host:port" or "unix:/path/to.sock"; the main
    # port then answers /admin/... with 404. Empty: admin on the main port.
    admin_listen: str = ""

    @property
    def admin_address(self) -> Address | None:
        if not self.admin_listen:
            return None
        return parse_address(self.admin_listen, "[serve] admin_listen")


@dataclass(frozen=True)
class Address:
    """Where a listener listens: a TCP host and port, or a unix socket's path."""

    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str, key: str) -> Address:
    """`host:port`, `[v6 address]:port` or `unix:/path/to.sock`; a mistake names `key`."""
    if value.startswith("unix:"):
        if not value[len("unix:") :]:
            raise ConfigError(f"{key} unix: needs a socket path, like unix:/run/rampart.sock")
        return Address(path=value[len("unix:") :])
    host, colon, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"{key} must be host:port (port 1-65535) or unix:/path/to.sock, got {value!r}"
        )
    return Address(host=host, port=int(port))


@dataclass(frozen=True)
class FaultsConfig:
    """Fault injection, as Envoy's fault filter does it: prove on a game day that the
    guardrails catch what they should. Off by default."""

    challenger_delay_ms: float = 0.0  # added to every challenger model call


@dataclass(frozen=True)
class FleetConfig:
    """Fleet mode: many sidecars, one rollout, coordinated through Redis. Off when `url`
    is empty."""

    url: str = ""  # redis://host:6379/0
    name: str = "default"  # several fleets may share one Redis
    host_id: str = ""  # default: hostname:port
    lease_s: float = 3.0  # the leader's lease, renewed each tick; lapsed, another host leads

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class RegistryConfig:
    """Where models come from: the local registry (files + SQLite in the state directory),
    or an MLflow model registry (`backend = "mlflow"`), whose versions are copied there."""

    backend: str = "local"  # or "mlflow"
    tracking_uri: str = ""  # mlflow: http(s)://..., sqlite:///..., file:///...
    model_name: str = ""  # mlflow: the registered model
    poll_s: float = 10.0  # mlflow: how often the @challenger alias is read (off the tick)


@dataclass(frozen=True)
class PairedConfig:
    """Paired scoring (router.paired): on challenger requests the champion also scores the
    same rows, after the answer is sent, for the paired guardrails."""

    enabled: bool = True
    fraction: float = 1.0  # of challenger requests (sampled evenly, not at random)
    max_per_s: float = 100.0  # paired requests per second per worker (a token bucket)
    # Pair while the challenger's share is at most this (phase 2's default share): past it
    # the A/B comparison has the evidence, and pairing would cost up to half the model CPU.
    max_split_bp: int = 1000

    @property
    def on(self) -> bool:
        return self.enabled and self.fraction > 0 and self.max_per_s > 0


@dataclass(frozen=True)
class Config:
    serve: ServeConfig = field(default_factory=ServeConfig)
    segments: SegmentSpace = field(default_factory=lambda: SegmentSpace.from_config({}))
    bucket_width: float = 0.01
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    raw: dict[str, Any] = field(default_factory=dict)  # every section, for the evaluator
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    paired: PairedConfig = field(default_factory=PairedConfig)

    @property
    def n_buckets(self) -> int:
        return math.ceil(1.0 / self.bucket_width - 1e-9)

    @property
    def state_path(self) -> Path:
        return Path(self.serve.state_dir).resolve()

    def with_overrides(self, **overrides: Any) -> Config:
        """`rampart serve` flags over the file: [serve] keys, and `fleet_url`,
        `fleet_name`, `host_id` for [fleet], `registry_backend`, `tracking_uri`, `model_name`
        for [registry]."""
        given = {k: v for k, v in overrides.items() if v is not None}
        fleet = {
            key: given.pop(flag)
            for flag, key in (("fleet_url", "url"), ("fleet_name", "name"), ("host_id", "host_id"))
            if flag in given
        }
        registry = {
            key: given.pop(flag)
            for flag, key in (
                ("registry_backend", "backend"),
                ("tracking_uri", "tracking_uri"),
                ("model_name", "model_name"),
            )
            if flag in given
        }
        return replace(
            self,
            serve=_serve(dict(_asdict(self.serve), **given)),
            fleet=_fleet(dict(_asdict(self.fleet), **fleet)),
            registry=_registry(dict(_asdict(self.registry), **registry)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Config:
        if path is None:
            return cls.from_dict({})
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        unknown = set(data) - set(KNOWN_SECTIONS)
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {sorted(unknown)}; known: {list(KNOWN_SECTIONS)}"
            )
        try:
            segments = SegmentSpace.from_config(data.get("segments", {}))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        calibration = data.get("calibration", {})
        _no_unknown("calibration", calibration, {"bucket_width"})
        width = float(calibration.get("bucket_width", 0.01))
        if not 0.001 <= width <= 0.5:
            raise ConfigError(f"[calibration] bucket_width must be in [0.001, 0.5], got {width}")
        faults = typed_section(FaultsConfig, "faults", data.get("faults", {}))
        if not 0 <= faults.challenger_delay_ms <= 60_000:
            raise ConfigError("[faults] challenger_delay_ms must be in [0, 60000]")
        fleet = _fleet(data.get("fleet", {}))
        registry = _registry(data.get("registry", {}))
        serve = _serve(data.get("serve", {}))
        paired = _paired(data.get("paired", {}))
        return cls(serve, segments, width, faults, fleet, data, registry, paired)


def _asdict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in fields(section)}


def typed_section(
    cls: Any,
    section: str,
    values: dict[str, Any],
    *,
    base: Any = None,
    extra: dict[str, Any] | None = None,
    fixed: tuple[str, ...] = (),
) -> Any:
    """Build dataclass `cls` from a config section, checking keys and types exactly: `base`
    gives the defaults (else `cls(**extra)`); `extra` fields and `fixed` ones are not keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
    extra = extra or {}
    defaults = base if base is not None else cls(**extra)
    settable = {f.name for f in fields(cls)} - set(extra) - set(fixed)
    unknown = set(values) - settable
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{section}]: {sorted(unknown)}; known: {sorted(settable)}"
        )
    out: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        if type(default) is float and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(
                f"[{section}] {name} must be {_a(type(default).__name__)}, got {value!r}"
            )
        out[name] = value
    return replace(defaults, **out)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _no_unknown(section: str, values: dict[str, Any], known: set[str]) -> None:
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{section}]: {sorted(unknown)}; known: {sorted(known)}"
        )


def _serve(values: dict[str, Any]) -> ServeConfig:
    serve: ServeConfig = typed_section(ServeConfig, "serve", values)
    if not 1 <= serve.workers <= serve.max_workers:
        raise ConfigError(
            f"[serve] workers must be between 1 and max_workers ({serve.max_workers}), "
            f"got {serve.workers}"
        )
    for name in (
        "max_body_bytes",
        "max_batch",
        "max_request_id_chars",
        "max_events",
        "token_ttl_s",
        "events_per_s",
    ):
        if getattr(serve, name) <= 0:
            raise ConfigError(f"[serve] {name} must be positive, got {getattr(serve, name)}")
    if not 0 < serve.body_timeout_s <= 3600:
        raise ConfigError(
            f"[serve] body_timeout_s must be in (0, 3600], got {serve.body_timeout_s}"
        )
    if serve.stale_after_s <= serve.ticker_s:
        raise ConfigError("[serve] stale_after_s must be longer than ticker_s")
    admin = serve.admin_address
    if admin is not None and (admin.host, admin.port) == (serve.host, serve.port):
        raise ConfigError(f"[serve] admin_listen must differ from the main {admin}")
    return serve


def _fleet(values: dict[str, Any]) -> FleetConfig:
    fleet: FleetConfig = typed_section(FleetConfig, "fleet", values)
    if fleet.url and not fleet.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"[fleet] url must be redis://host:port/db, rediss:// or unix://, got {fleet.url!r}"
        )
    if not fleet.name or not all(c.isalnum() or c in "-_." for c in fleet.name):
        raise ConfigError(f"[fleet] name must be letters, digits, '-', '_' or '.': {fleet.name!r}")
    if not 1.0 <= fleet.lease_s <= 60.0:
        raise ConfigError(f"[fleet] lease_s must be in [1, 60], got {fleet.lease_s}")
    return fleet


def _registry(values: dict[str, Any]) -> RegistryConfig:
    registry: RegistryConfig = typed_section(RegistryConfig, "registry", values)
    if registry.backend not in ("local", "mlflow"):
        raise ConfigError(
            f"[registry] backend must be 'local' or 'mlflow', got {registry.backend!r}"
        )
    if registry.backend == "mlflow":
        for key in ("tracking_uri", "model_name"):
            if not getattr(registry, key):
                raise ConfigError(f"[registry] {key} is required with backend = 'mlflow'")
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "[registry] backend = 'mlflow' needs mlflow-skinny: pip install 'rampart[mlflow]'"
            )
    if not 0.1 <= registry.poll_s <= 3600:
        raise ConfigError(f"[registry] poll_s must be in [0.1, 3600], got {registry.poll_s}")
    return registry


def _paired(values: dict[str, Any]) -> PairedConfig:
    paired: PairedConfig = typed_section(PairedConfig, "paired", values)
    if not 0 <= paired.fraction <= 1:
        raise ConfigError(f"[paired] fraction must be in [0, 1], got {paired.fraction}")
    if not 0 <= paired.max_per_s <= 100_000:
        raise ConfigError(f"[paired] max_per_s must be in [0, 100000], got {paired.max_per_s}")
    if not 0 < paired.max_split_bp <= 10_000:
        raise ConfigError(f"[paired] max_split_bp must be in (0, 10000], got {paired.max_split_bp}")
    return paired


def check_secrets(fleet: bool) -> None:
    """The secrets the environment must hold, checked before anything starts."""
    env = os.environ.get("RAMPART_TOKEN_SECRET")
    if env is not None and len(env) < 16:
        raise ConfigError("RAMPART_TOKEN_SECRET must be at least 16 characters")
    if fleet and not env:
        raise ConfigError(
            "RAMPART_TOKEN_SECRET is required in fleet mode: every host must verify the "
            "event tokens the others sign"
        )


def token_secret(state_dir: Path) -> bytes:
    """RAMPART_TOKEN_SECRET, or a random one kept in the state directory so every
    worker and every restart signs and verifies with the same key."""
    env = os.environ.get("RAMPART_TOKEN_SECRET")
    if env:
        if len(env) < 16:
            raise ConfigError("RAMPART_TOKEN_SECRET must be at least 16 characters")
        return env.encode()
    path = state_dir / "token.secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    try:
        os.link(tmp, path)  # first writer wins; everyone then reads the same file
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()
