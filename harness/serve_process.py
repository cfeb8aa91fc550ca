"""`rampart serve` as a child process, for the scenarios, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from harness import ground_truth

ADMIN_TOKEN = "rampart-scenario"


def pin(cpu: int) -> list[str]:
    """`taskset -c cpu` when the machine has a core to spare, else nothing."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """`rampart serve` as a child process in its own session (so it can be stopped whole)."""

    def __init__(
        self, state: Path, config: Path, port: int, env: dict[str, str], cwd: Path | None = None
    ) -> None:
        self.config = config
        self.cwd = cwd  # `python -m` imports from here first: another checkout's rampart
        self.cmd = [
            *pin(0),
            sys.executable,
            "-m",
            "rampart.cli",
            "serve",
            "--state-dir",
            str(state),
            "--config",
            str(config),
            "--port",
            str(port),
        ]
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rampart serve exited with code {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("rampart serve did not become ready")

    def wait_for_evaluator(self, timeout_s: float = 300.0) -> None:
        """Until the evaluator's heartbeat is fresh: its first start on a machine compiles
        the numba kernels (a minute or so), and admin commands wait for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status = self.status()
                if status.get("evaluator") and not status.get("stale"):
                    return
            time.sleep(0.25)
        raise RuntimeError("the evaluator did not start")

    def warm_up(self) -> None:
        """First requests pay for lazy imports and JIT: keep them out of the measurements."""
        body = {"request_id": "warm", "features": [[0.0] * len(ground_truth.FEATURES)]}
        with httpx.Client(timeout=10) as client:
            for i in range(30):
                body["request_id"] = f"warm-{i}"
                client.post(f"{self.url}/predict", json=body)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/status", timeout=5).json())

    def admin(self, action: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/admin/rollout/{action}",
            json=payload or {},
            timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"{action} refused: {r.status_code} {r.text}")
        return dict(r.json())
