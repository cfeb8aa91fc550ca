"""Shared fixtures. The helpers they use live in `tests/support`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
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
