"""One simulator run's settings, `SimConfig`: checked at construction, loopback targets only."""

from __future__ import annotations

from dataclasses import dataclass

from harness import ground_truth
from harness.target import parse_url


@dataclass
class SimConfig:
    """One simulator run. Checked at construction: a non-loopback `url` raises TargetNotAllowed."""

    url: str
    rate: float
    duration_s: float
    candidates: int = 4
    seed: int = 1
    mix: ground_truth.Mix | None = None
    click_delay_s: float = 0.0
    positional: bool = True
    poisson: bool = False
    max_in_flight: int = 128
    timeline_s: float = 1.0
    late_ms: float = 10.0
    flush_s: float = 0.05
    flush_events: int = 200
    drain_timeout_s: float = 5.0
    request_prefix: str = "sim-"
    # More hosts of one fleet: /predict goes to each in turn and every batch of events to the
    # next, so an impression is mostly posted to another host than the one that served it.
    also: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        host, port, path = parse_url(self.url)
        self.host, self.port, self.base = host, port, path.rstrip("/")
        self.origin = _origin(host, port)
        # Each host's origin and path prefix; every one checked to be on loopback.
        self.origins = [f"{self.origin}{self.base}"]
        for url in self.also:
            host, port, path = parse_url(url)
            self.origins.append(f"{_origin(host, port)}{path.rstrip('/')}")
        checks = [
            (self.rate > 0, f"rate must be > 0 requests/s, got {self.rate}"),
            (self.duration_s > 0, f"duration_s must be > 0, got {self.duration_s}"),
            (1 <= self.candidates <= 256, f"candidates must be 1..256, got {self.candidates}"),
            (self.click_delay_s >= 0, f"click_delay_s must be >= 0, got {self.click_delay_s}"),
            (self.max_in_flight >= 1, f"max_in_flight must be >= 1, got {self.max_in_flight}"),
            (self.timeline_s > 0, f"timeline_s must be > 0, got {self.timeline_s}"),
            (
                1 <= self.flush_events <= 1000,
                f"flush_events must be 1..1000, got {self.flush_events}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        ground_truth.resolve_mix(self.mix)


def _origin(host: str, port: int) -> str:
    bracketed = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"http://{bracketed}:{port}"
