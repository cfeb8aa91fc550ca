"""The benchmark's baseline: the least a Python server can do to answer /predict.

A bare ASGI callable — no Starlette, no routing, no telemetry — that reads the body,
decodes `{"request_id": str, "features": [[float, ...], ...]}` (or one row) from msgpack,
or from JSON when the request says `application/json` (as Rampart's codec does: stdlib
`json`), runs one onnxruntime session on every row and answers `{"predictions": [...]}` in
the request's type. Rampart's own server is measured against this: the gap is what
routing, splitting and recording cost.

    python -m bench.bare_server --model PATH [--host 127.0.0.1] [--port 8001]

The model path may also come from `RAMPART_BENCH_MODEL`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ENV = "RAMPART_BENCH_MODEL"

_MSGPACK = b"application/msgpack"
_JSON = b"application/json"


def make_session(model_path: str) -> ort.InferenceSession:
    """One single-threaded session, configured as Rampart's workers configure theirs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Spinning threads would burn the core the event loop needs (see DESIGN.md pitfalls).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


class BareApp:
    """ASGI app: POST /predict → one `session.run`, nothing else."""

    def __init__(self, model_path: str) -> None:
        self.session = make_session(model_path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_path}: expected one input, found {len(inputs)}")
        self.input_name: str = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        self.n_features: int | None = width if isinstance(width, int) else None
        self.output_names: list[str] = [self.session.get_outputs()[0].name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/predict" or scope["method"] != "POST":
            await _respond(send, 404, b"not found")
            return
        message = await receive()
        body: bytes = message.get("body", b"")
        while message.get("more_body", False):
            message = await receive()
            body += message.get("body", b"")
        as_json = (b"content-type", _JSON) in scope["headers"]
        try:
            rows = (json.loads(body) if as_json else msgpack.unpackb(body))["features"]
            if rows and not isinstance(rows[0], list):
                rows = [rows]
            x = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            await _respond(send, 400, b"bad_request")
            return
        if x.ndim != 2 or x.shape[0] == 0 or (self.n_features and x.shape[1] != self.n_features):
            await _respond(send, 400, b"bad_shape")
            return
        out = self.session.run(self.output_names, {self.input_name: x})[0]
        answer = {"predictions": out.reshape(-1).tolist()}
        if as_json:
            payload = json.dumps(answer, separators=(",", ":")).encode()
        else:
            payload = msgpack.packb(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _JSON if as_json else _MSGPACK),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


async def _respond(send: Send, status: int, reason: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(reason))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": reason})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV), help=f"or ${MODEL_ENV}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"no model: pass --model PATH or set {MODEL_ENV}")
    import uvicorn

    uvicorn.run(
        BareApp(args.model),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
