"""`rampart models register|list` (rampart/cli.py) on the local registry: `--start` queues a
candidate (it starts at once when no rollout runs), `--replace` takes the place of the queued
ones, `list` shows the queue; flag and config mistakes are one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import write_model

from rampart.cli import main


def _register(tmp_path: Path, name: str, *flags: str) -> None:
    model = write_model(tmp_path / f"{name}.onnx", weights=[0.1 * len(name)] * 4)
    assert main(["models", "register", str(model), "--state-dir", str(tmp_path / "s"), *flags]) == 0


def test_models_register_start_queues_and_list_shows_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(tmp_path, "a")
    _register(tmp_path, "bb", "--start")
    _register(tmp_path, "ccc", "--start")
    out = capsys.readouterr()
    assert out.out.split() == ["1", "2", "3"]  # stdout: the versions, as without --start
    assert "model 2 queued at position 1" in out.err
    assert "model 3 queued at position 2" in out.err
    _register(tmp_path, "dddd", "--start", "--replace")
    assert "model 4 queued at position 1 (replacing 2, 3)" in capsys.readouterr().err
    assert main(["models", "list", "--state-dir", str(tmp_path / "s")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "queued     position 1" in lines["4"]
    assert "candidate" in lines["2"] and "replaced in the queue by 4" in lines["2"]
    assert "champion" in lines["1"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--replace"], "--replace goes with --start", id="replace-alone"),
        pytest.param(
            ["--registry-backend", "mlflow"], "[registry] tracking_uri is required", id="no-uri"
        ),
    ],
)
def test_models_register_mistakes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    model = write_model(tmp_path / "m.onnx")
    argv = ["models", "register", str(model), "--state-dir", str(tmp_path / "s"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
