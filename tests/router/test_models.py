"""A loaded model's runs, on real onnxruntime sessions: `Model.predict` answers what the
session's public `run` answers, and a run that fails raises for the worker to count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from support.models import LARGE_VALUE, write_model

from router.models import Model


@pytest.mark.parametrize(
    ("kind", "output_shape", "rows"),
    [
        pytest.param("linear", "N1", 1, id="one-row"),
        pytest.param("linear", "N1", 100, id="100-rows"),
        pytest.param("linear", "N", 3, id="flat-output"),
    ],
)
def test_model_predict_answers_what_the_session_run_answers(
    tmp_path: Path, kind: str, output_shape: str, rows: int
) -> None:
    path = write_model(tmp_path / "m.onnx", kind=kind, output_shape=output_shape)
    model = Model(path, 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(rows, model.width)).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    out = model.predict(x)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_model_predict_raises_on_a_failing_run(tmp_path: Path) -> None:
    model = Model(write_model(tmp_path / "m.onnx", kind="raise_on_large"), 1)
    x = np.zeros((1, model.width), np.float32)
    assert model.predict(x).shape == (1, 1)
    x[0, 0] = LARGE_VALUE * 2
    with pytest.raises(Exception):  # noqa: B017 (onnxruntime raises several types)
        model.predict(x)


def test_model_predict_raises_on_rows_of_another_width(tmp_path: Path) -> None:
    model = Model(write_model(tmp_path / "m.onnx"), 1)
    with pytest.raises(Exception):  # noqa: B017
        model.predict(np.zeros((1, model.width + 1), np.float32))
