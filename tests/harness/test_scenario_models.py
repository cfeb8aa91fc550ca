from __future__ import annotations

import subprocess
import sys

import pytest

from harness import scenario_models


@pytest.mark.parametrize(
    "variant", [pytest.param(v, id=v) for v in (*scenario_models.VARIANTS, "challenger")]
)
def test_model_path_finds_shipped_file(variant: str) -> None:
    path = scenario_models.model_path(variant)
    assert path.name == f"{variant}.onnx" and path.stat().st_size > 500
    assert path.parent == scenario_models.MODELS_DIR


def test_model_path_refuses_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown model variant 'better'"):
        scenario_models.model_path("better")


def test_scenario_models_import_without_onnx() -> None:
    code = "import sys, harness.scenario_models; assert 'onnx' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
