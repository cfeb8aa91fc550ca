"""Shared fixtures. The helpers they use live in `tests/support`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import SECRET, Fleet
from support.redis_server import running_redis
from support.server import Server, register_pair, serving


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    """A state directory whose registry holds a champion (v1) and a candidate (v2)."""
    return register_pair(tmp_path / "state")


@pytest.fixture
def server(registered: Path) -> Iterator[Server]:
    """`rampart serve` on the registered state: ready, its evaluator ticking, no rollout."""
    with serving(registered) as s:
        yield s


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """A real redis-server of its own for a fleet; the test starts its hosts (`Fleet.start`),
    all stopped when it ends. Mark the test `needs_redis`."""
    monkeypatch.setenv("RAMPART_TOKEN_SECRET", SECRET)
    with running_redis(tmp_path / "redis") as server:
        f = Fleet(tmp_path, server)
        try:
            yield f
        finally:
            f.stop()


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database, made once (support.mlflow_store.Store copies it)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from support.mlflow_store import make_template

    return make_template(tmp_path_factory.mktemp("mlflow-template"))
