"""A fleet of real `rampart serve --fleet` hosts on one real `redis-server`, for the fleet
tests: `Fleet.register` runs `rampart models register --fleet`, `Fleet.start` starts a host
(with any extra config, e.g. a `[registry]` section), `Fleet.leader` waits for the leader
every live host agrees on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.redis_server import RedisServer
from support.server import Server, Status, rampart, start_server, stop_server
from support.server import wait_for as wait

FLEET = "test"
SECRET = "fleet-token-secret-0123456789"
STATE_S = 30.0


class Fleet:
    def __init__(self, tmp: Path, redis: RedisServer) -> None:
        self.tmp = tmp
        self.redis = redis
        self.hosts: dict[str, Server] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def register(self, *models: Path) -> list[str]:
        out = []
        for path in models:
            r = rampart("models", "register", str(path), "--fleet", self.url, "--fleet-name", FLEET)
            assert r.returncode == 0, r.stderr
            out.append(r.stdout.strip())
        return out

    def start(self, host_id: str, extra: str = "") -> Server:
        """Start host `host_id`; `extra` is added to its config file."""
        config = self.tmp / f"{host_id}.toml"
        config.write_text(
            f'[fleet]\nurl = "{self.url}"\nname = "{FLEET}"\nhost_id = "{host_id}"\nlease_s = 2.0\n'
            + extra
        )
        server = start_server(self.tmp / host_id, config=config)
        self.hosts[host_id] = server
        return server

    def status(self, host_id: str) -> Status:
        return self.hosts[host_id].status()

    def leader(self, other_than: str | None = None) -> str:
        """The leader every live host agrees on (and not `other_than`)."""

        def agreed() -> str | None:
            seen = {self.status(h)["fleet"]["leader"] for h in self.live()}
            leader = seen.pop() if len(seen) == 1 else None
            return leader if leader != other_than else None

        return wait(agreed, STATE_S, "one leader every host agrees on")

    def live(self) -> list[str]:
        return [h for h, s in self.hosts.items() if s.proc.poll() is None]

    def wait_all(self, check: Any, what: str) -> None:
        for h in self.live():
            self.hosts[h].wait_for_status(check, f"{what} on {h}", STATE_S)

    def stop(self) -> None:
        for server in self.hosts.values():
            stop_server(server)
