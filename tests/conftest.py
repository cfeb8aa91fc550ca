"""Shared fixtures: tiny ONNX models and a real `rampart serve` on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ADMIN_TOKEN = "test-admin-token"


def tiny_model(
    path: Path,
    *,
    n: int = 4,
    scale: float = 1.0,
    kind: str = "linear",
    names: list[str] | None = None,
) -> Path:
    """sigmoid(x·w − 3.9) over `n` features; `kind` "nan" answers NaN and "high" > 1
    for rows whose feat0 exceeds 100,
    and "raise" makes onnxruntime raise for them."""
    w = numpy_helper.from_array(
        (np.linspace(-1, 1, n).reshape(n, 1) * scale).astype(np.float32), "W"
    )
    b = numpy_helper.from_array(np.array([-3.9], dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["z"]),
    ]
    inits = [w, b]
    if kind in ("nan", "high"):
        # Bad only on live traffic: the probe batch (|x| < 10) passes; feat0 > 100 does not.
        e0 = np.zeros((n, 1), dtype=np.float32)
        e0[0, 0] = 1
        inits += [
            numpy_helper.from_array(e0, "e0"),
            numpy_helper.from_array(np.array([100.0], dtype=np.float32), "hundred"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("Sigmoid", ["z"], ["s"]),
            helper.make_node("MatMul", ["x", "e0"], ["x0"]),
            helper.make_node("Sub", ["x0", "hundred"], ["over"]),
        ]
        if kind == "nan":
            # log(100 - x0) is NaN past 100; times zero keeps it NaN there and 0 elsewhere.
            nodes += [
                helper.make_node("Sub", ["hundred", "x0"], ["room"]),
                helper.make_node("Log", ["room"], ["l"]),
                helper.make_node("Mul", ["l", "zero"], ["nanmask"]),
                helper.make_node("Add", ["s", "nanmask"], ["y"]),
            ]
        else:
            nodes += [
                helper.make_node("Relu", ["over"], ["excess"]),
                helper.make_node("Add", ["s", "excess"], ["y"]),
            ]
    elif kind == "raise":
        # Gather with index max(feat0 - 100, 0): out of bounds, so onnxruntime raises,
        # only for rows whose feat0 exceeds 101; the probe batch passes.
        e0 = np.zeros((n, 1), dtype=np.float32)
        e0[0, 0] = 1
        inits += [
            numpy_helper.from_array(e0, "e0"),
            numpy_helper.from_array(np.array([100.0], dtype=np.float32), "hundred"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "table"),
        ]
        nodes += [
            helper.make_node("Sigmoid", ["z"], ["s"]),
            helper.make_node("MatMul", ["x", "e0"], ["x0"]),
            helper.make_node("Sub", ["x0", "hundred"], ["over"]),
            helper.make_node("Relu", ["over"], ["excess"]),
            helper.make_node("Cast", ["excess"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
            helper.make_node("Add", ["s", "picked"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model, {"features": json.dumps(names or [f"feat{i}" for i in range(n)]), "name": "tiny"}
    )
    onnx.save(model, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, state: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.state = state
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc

    def admin(self, action: str, payload: dict[str, object] | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}/admin/rollout/{action}",
            json=payload or {},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )


def rampart(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rampart.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def start_server(state: Path, *, workers: int = 1, config: Path | None = None) -> Server:
    port = free_port()
    env = dict(os.environ, RAMPART_ADMIN_TOKEN=ADMIN_TOKEN)
    cmd = [
        sys.executable,
        "-m",
        "rampart.cli",
        "serve",
        "--state-dir",
        str(state),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    server = Server(state, port, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rampart serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError("rampart serve did not become ready in 60 s")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, 15)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, 9)
            server.proc.wait()


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    """A state directory whose registry holds a champion (v1) and a candidate (v2)."""
    state = tmp_path / "state"
    for i, path in enumerate(
        (tiny_model(tmp_path / "a.onnx"), tiny_model(tmp_path / "b.onnx", scale=2.0))
    ):
        out = rampart("models", "register", str(path), "--state-dir", str(state))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(i + 1)
    return state


@pytest.fixture
def server(registered: Path) -> Iterator[Server]:
    s = start_server(registered)
    yield s
    stop_server(s)
