"""A private `redis-server` on a free loopback port: the fleet store of `rampart demo --fleet`
and the fleet benchmarks. Debian's `redis-server` must be on PATH."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from harness.serve_process import free_port


class RedisMissing(RuntimeError):
    """No `redis-server` on PATH."""


@contextlib.contextmanager
def private_redis(*, aof: bool = False, start_s: float = 10.0) -> Iterator[str]:
    """Run `redis-server` (append-only file or no persistence) until the block ends; yields
    its URL, `redis://127.0.0.1:PORT/0`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisMissing("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rampart-redis-") as directory:
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
        cmd += (
            ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url, socket_timeout=0.5)
            deadline = time.monotonic() + start_s
            while True:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
