"""Helpers shared by the tests, each defined once.

- `support.models`: the ONNX model builder (every kind of good and broken model).
- `support.server`: `rampart serve` as a child process (`start_server`, `serving`), the
  `rampart` CLI runner, `register`, and `wait_for` (poll until a state is reached).
- `support.net`: `free_port`.
- `support.traffic`: counts written into a real shared-memory file as a worker would.
- `support.webhook`: a scripted webhook receiver on loopback.

Importable as `support` because pytest puts `tests/` on the path (pyproject's `pythonpath`).
"""
