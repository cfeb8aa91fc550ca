"""Benchmark: CPU per /predict request inside the process, rampart's ASGI app against the bare one.

No sockets and no HTTP parser: both ASGI apps are called directly, on one asyncio task, with
receive/send callables built once (the body in one message; `send` keeps nothing). Rampart's
app is `router.app.App` with a real state directory (the demo champion registered, slot 0
loaded, no rollout: the split at 0, the heartbeat fresh), its `Worker` built and its kernels
warmed as the lifespan does, but no ticker; the bare app is `bench.bare_server.BareApp` on the
same ONNX file. What is left is what each app costs per request, which is what the closed-loop
throughput ratio measured from outside is made of, plus uvicorn's share that both pay alike.

Rounds alternate A B B A; each round times `--n` requests with `time.process_time_ns` (CPU time:
a neighbour on the core delays a round but is not counted in it). The median µs per request
of each contender and the median of the per-round ratios are reported for one row in
msgpack, one row in JSON and 100 rows in msgpack (the bodies of `bench.bench_predict`).
`--parts` adds the cost of each step of rampart's path timed on its own (`timeit` over the
same objects), to attribute the difference.

    python -m bench.bench_hotpath [--rounds 7] [--n 20000] [--parts]
    perf stat -e instructions python -m bench.bench_hotpath --only rampart --payload "1 row msgpack"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bare_server import BareApp
from bench.bench_predict_servers import bodies, n_features
from harness.scenario_models import model_path

PAYLOADS = {  # name: (rows, JSON?), as bench.bench_predict sends them
    "1 row msgpack": (1, False),
    "1 row JSON": (1, True),
    "100 rows msgpack": (100, False),
}
ORDER = ("rampart", "bare")
App = Callable[[dict[str, Any], Any, Any], Any]


def rampart_app(root: Path) -> Any:
    """`router.app.App` over a fresh state directory with the champion in slot 0, no rollout."""
    os.environ.setdefault("RAMPART_TOKEN_SECRET", secrets.token_hex(16))
    from guardrails.evaluator import prepare
    from router.app import App, _warm_up
    from router.config import Config
    from router.control import ControlWriter
    from router.registry import Registry
    from router.worker import Worker

    # The heartbeat is written once: a long stale timeout keeps the route as a live
    # evaluator's would (not stale, so nothing is counted as routed while stale).
    config = Config.from_dict({"serve": {"state_dir": str(root / "state"), "stale_after_s": 1e6}})
    registry = Registry(config.state_path)
    registry.register(model_path("champion"))
    registry.close()
    shm = prepare(config)
    control = ControlWriter(shm)
    control.claim(os.getpid())
    control.load_slot(0, 1)
    control.flip(0, 0, False)
    control.beat()
    app = App(config)
    worker = Worker(config)
    _warm_up(worker)
    app.worker = worker
    assert not worker.route.stale and worker.route.split_bp == 0
    return app


def scope_of(kind: bytes, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
        ],
    }


class Driver:
    """Calls one app `n` times on one request; the answers are checked once, then dropped."""

    def __init__(self, app: App, kind: bytes, body: bytes) -> None:
        self.app = app
        self.scope = scope_of(kind, body)
        message = {"type": "http.request", "body": body, "more_body": False}
        self.sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return message

        async def keep(msg: Any) -> None:
            self.sent.append(msg)

        async def drop(msg: Any) -> None:
            pass

        self.receive, self.keep, self.drop = receive, keep, drop

    async def check(self) -> None:
        self.sent.clear()
        await self.app(self.scope, self.receive, self.keep)
        status = self.sent[0]["status"]
        if status != 200:
            raise RuntimeError(f"{status}: {self.sent[1]['body']!r}")

    async def run(self, n: int) -> int:
        """CPU ns for `n` requests."""
        app, scope, receive, send = self.app, self.scope, self.receive, self.drop
        t0 = time.process_time_ns()
        for _ in range(n):
            await app(scope, receive, send)
        return time.process_time_ns() - t0


async def compare(apps: dict[str, App], rounds: int, n: int, only: str | None) -> dict[str, Any]:
    width = n_features()
    out: dict[str, Any] = {}
    for payload, (rows, as_json) in PAYLOADS.items():
        if only and payload != only:
            continue
        body = bodies(width, rows, as_json)[0]
        kind = b"application/json" if as_json else b"application/msgpack"
        drivers = {name: Driver(app, kind, body) for name, app in apps.items()}
        for d in drivers.values():
            await d.check()
            await d.run(max(n // 10, 100))  # warm
        us: dict[str, list[float]] = {name: [] for name in drivers}
        for r in range(rounds):
            order = list(drivers) if r % 2 == 0 else list(drivers)[::-1]
            for name in order:
                us[name].append(await drivers[name].run(n) / n / 1000)
        med = {name: statistics.median(v) for name, v in us.items()}
        row: dict[str, Any] = {"us_per_request": med, "rounds": us}
        if len(med) == 2:
            per_round = [a / b for a, b in zip(us["rampart"], us["bare"], strict=True)]
            row["cpu_ratio"] = statistics.median(per_round)  # rampart's CPU / bare's, per round
            row["throughput_ratio"] = 1 / row["cpu_ratio"]
        out[payload] = row
        brief = {k: v for k, v in row.items() if k != "rounds"}
        print(f"{payload}: {json.dumps(brief)}", flush=True)
    return out


def parts(app: Any, n: int) -> dict[str, dict[str, float]]:
    """µs per call of each step of rampart's /predict path, timed alone (best of 5)."""
    loop = asyncio.new_event_loop()
    try:
        table = {
            payload: _parts_of(app, rows, as_json, n, loop)
            for payload, (rows, as_json) in PAYLOADS.items()
        }
    finally:
        loop.close()
    for payload, row in table.items():
        print(f"{payload}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return table


def _parts_of(
    app: Any, rows: int, as_json: bool, n: int, loop: asyncio.AbstractEventLoop
) -> dict[str, float]:
    import msgpack
    import numpy as np

    from router import recording
    from router.codec import decode, encode, kind_of, positional_rows
    from router.raw_asgi import framing, read_body, send_answer

    worker = app.worker
    model = worker.models[worker.route.champion]
    addr = worker.slot_addr[worker.route.champion]
    body = bodies(n_features(), rows, as_json)[0]
    kind = b"application/json" if as_json else b"application/msgpack"
    headers = scope_of(kind, body)["headers"]
    req = decode(body, kind)
    answer, _, cell, _ = worker.predict(req)
    x = positional_rows(req["features"], worker.serve.max_batch)
    out = model.predict(x)
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def drop(msg: Any) -> None:
        pass

    async def read_n() -> None:
        for _ in range(n):
            await read_body(receive, 1 << 20, None, app.bodies)

    async def send_n() -> None:
        for _ in range(n):
            await send_answer(drop, 200, b"x", kind)

    async def empty_n() -> None:
        for _ in range(n):
            await drop(None)

    def best(fn: Callable[[], object]) -> float:
        return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6

    def timed(coro: Callable[[], Any]) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            loop.run_until_complete(coro())
            runs.append(time.perf_counter() - t0)
        return min(runs) / n * 1e6

    def bare_decode() -> object:
        return np.asarray(
            (json.loads(body) if as_json else msgpack.unpackb(body))["features"], np.float32
        )

    return {
        "framing + kind_of": best(lambda: kind_of(framing(headers)[0])),
        "_read_body": timed(read_n),
        "decode": best(lambda: decode(body, kind)),
        "Worker.predict (all)": best(lambda: worker.predict(req)),
        "· positional_rows": best(lambda: positional_rows(req["features"], worker.serve.max_batch)),
        "· Model.predict (onnxruntime)": best(lambda: model.predict(x)),
        "· record_predictions": best(lambda: recording.record_predictions(addr, out)),
        "· segments.cell": best(lambda: worker.segments.cell(req["segment"])),
        "· token": best(lambda: worker.token(1, 0, cell, rows)),
        "encode": best(lambda: encode(answer, kind)),
        "record_request": best(lambda: recording.record_request(addr, 120, cell, 0)),
        "_send (two awaits of send)": timed(send_n),
        "(one await of an empty coroutine)": timed(empty_n),
        "bare: decode + asarray": best(bare_decode),
    }


def _stubs(app: Any) -> dict[str, Callable[[], Callable[[], None]]]:
    """Each of rampart's own steps replaced by the cheapest stand-in (in this process only):
    name -> install(), which returns the function that puts the real one back."""
    from router import app as app_module
    from router import codec, recording

    worker = app.worker
    token = worker.token(1, 0, 0, 1)

    def undo_all(undo: list[Callable[[], None]]) -> Callable[[], None]:
        def run() -> None:
            for u in undo:
                u()

        return run

    def patch(obj: Any, name: str, value: Any) -> Callable[[], None]:
        old = getattr(obj, name)
        setattr(obj, name, value)
        return lambda: setattr(obj, name, old)

    class Cells:  # the segment space, frozen: replaced whole
        n_cells = worker.segments.n_cells

        def cell(self, segment: Any) -> int:
            return 0

    def no_deadline() -> Callable[[], None]:
        undo = [
            patch(app.bodies, "enter", lambda: None),
            patch(app.bodies, "leave", lambda task: None),
        ]
        return undo_all(undo)

    def no_recording() -> Callable[[], None]:
        undo = [
            patch(recording, "record_request", lambda addr, us, cell, error: None),
            patch(recording, "record_predictions", lambda addr, out: 0),
        ]
        return undo_all(undo)

    def plain_run() -> Callable[[], None]:
        model = worker.models[worker.route.champion]
        return patch(model, "_run", model._session.run)

    return {
        "token (sign)": lambda: patch(worker, "token", lambda *a: token),
        "body deadline (enter, leave)": no_deadline,
        "recording kernels (predictions, request)": no_recording,
        "all_finite kernel": lambda: patch(codec, "all_finite", lambda x: True),
        "segment cell": lambda: patch(worker, "segments", Cells()),
        "answer encoding as JSON head (put back json.dumps)": lambda: patch(
            app_module, "encode_answer", codec.encode
        ),
        "run through the binding (put back InferenceSession.run)": plain_run,
        "_perf_ns clock reads": lambda: patch(app_module, "_perf_ns", int),
        "(nothing: full against full)": lambda: lambda: None,
    }


async def ablate(app: Any, rounds: int, n: int, only: str | None) -> dict[str, Any]:
    """µs per request each stub saves: rampart as it is against rampart with that step
    stubbed, alternating rounds, median of the per-round differences (a negative figure:
    the stub, putting back what was there before, costs more)."""
    width = n_features()
    out: dict[str, Any] = {}
    for payload, (rows, as_json) in PAYLOADS.items():
        if only and payload != only:
            continue
        body = bodies(width, rows, as_json)[0]
        kind = b"application/json" if as_json else b"application/msgpack"
        driver = Driver(app, kind, body)
        await driver.run(max(n // 10, 100))
        row = {}
        for name, install in _stubs(app).items():
            diffs = []
            for r in range(rounds):
                t = {}
                for which in ("full", "stub") if r % 2 == 0 else ("stub", "full"):
                    if which == "full":
                        t[which] = await driver.run(n)
                        continue
                    undo = install()
                    try:
                        t[which] = await driver.run(n)
                    finally:
                        undo()
                diffs.append((t["full"] - t["stub"]) / n / 1000)
            row[name] = statistics.median(diffs)
            await driver.check()
        out[payload] = row
        print(f"{payload}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_hotpath", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000, help="requests per round")
    parser.add_argument("--parts", action="store_true", help="time each step of the path")
    parser.add_argument("--ablate", action="store_true", help="µs each of rampart's steps costs")
    parser.add_argument("--only", choices=ORDER, help="one contender (for perf stat)")
    parser.add_argument("--payload", choices=list(PAYLOADS), help="one payload")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rampart-hotpath-") as tmp:
        apps: dict[str, App] = {}
        rampart = None
        if args.only != "bare":
            rampart = apps["rampart"] = rampart_app(Path(tmp))
        if args.only != "rampart":
            apps["bare"] = BareApp(str(model_path("champion")))
        try:
            report: dict[str, Any] = {
                "load_average": os.getloadavg(),
                "compare": asyncio.run(compare(apps, args.rounds, args.n, args.payload)),
            }
            if args.parts and rampart is not None:
                report["parts_us"] = parts(rampart, args.n)
            if args.ablate and rampart is not None:
                report["ablate_us"] = asyncio.run(
                    ablate(rampart, args.rounds, args.n, args.payload)
                )
        finally:
            if rampart is not None:
                rampart.worker.lock.release()
                rampart.worker.shm.close()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
