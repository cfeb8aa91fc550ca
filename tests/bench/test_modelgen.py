from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidProtobuf
from support import models

from bench import modelgen
from bench.modelgen import FEATURES, MODELS
from harness import ground_truth, scenario_models

TABLET = ground_truth.DEVICE_TYPES.index(scenario_models.REGRESSED_DEVICE)


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # the raise tests would log each expected failure
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    return np.asarray(sess.run(None, {modelgen.INPUT_NAME: flat})[0]).reshape(x.shape[:-1])


@pytest.fixture(scope="module")
def sessions() -> dict[str, ort.InferenceSession]:
    return {variant: session(build()) for variant, build in MODELS.items()}


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    x = ground_truth.sample_features(np.random.default_rng(1), 20_000)
    return x, ground_truth.ground_truth_ctr(x)


@pytest.fixture(scope="module")
def slates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20k requests of 5 candidates, their true CTRs, and each request's device."""
    x = ground_truth.sample_requests(np.random.default_rng(2), 20_000, 5)
    return x, ground_truth.ground_truth_ctr(x), ground_truth.device_index(x[:, 0, :])


def top5(
    sess: ort.InferenceSession, slates: tuple[np.ndarray, ...], device: int | None = None
) -> float:
    """Mean true CTR of the shown (top-scored) candidate, over requests on `device` or all."""
    x, truth, devices = slates
    keep = np.ones(len(x), dtype=bool) if device is None else devices == device
    return ground_truth.top_choice_ctr(predict(sess, x[keep]), truth[keep])


# --- the models ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [pytest.param(v, id=v) for v in MODELS])
def test_modelgen_model_has_contract_signature(variant: str) -> None:
    model = MODELS[variant]()
    assert model.ir_version == 9
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    [inp] = model.graph.input
    [out] = model.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and in_dims[1].dim_value == len(FEATURES)
    out_dims = out.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == in_dims[0].dim_param and out_dims[1].dim_value == 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["features"]) == FEATURES
    assert meta["name"].startswith("ctr-") and meta["description"]
    sess = session(model)  # loads in onnxruntime
    assert [i.name for i in sess.get_inputs()] == [modelgen.INPUT_NAME]
    y = sess.run(None, {modelgen.INPUT_NAME: np.zeros((3, len(FEATURES)), np.float32)})[0]
    assert y.shape == (3, 1) and y.dtype == np.float32


def test_champion_approximates_ground_truth(
    sessions: dict[str, ort.InferenceSession], rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, truth = rows
    pred = predict(sessions["champion"], x)
    assert np.corrcoef(pred, truth)[0, 1] > 0.9
    assert 0.9 < pred.mean() / truth.mean() < 1.1


def test_challenger_better_ranks_better_than_champion(
    sessions: dict[str, ort.InferenceSession], slates: tuple[np.ndarray, ...]
) -> None:
    assert top5(sessions["challenger_better"], slates) > 1.02 * top5(sessions["champion"], slates)
    x, truth, _ = slates
    pred = predict(sessions["challenger_better"], x)
    assert 0.9 < pred.mean() / truth.mean() < 1.1


def test_broken_constant_predicts_two_percent(sessions: dict[str, ort.InferenceSession]) -> None:
    x = ground_truth.sample_features(np.random.default_rng(9), 100)
    np.testing.assert_allclose(predict(sessions["broken_constant"], x), 0.02, rtol=1e-6)


def test_broken_nan_predicts_nan_only_on_live_rows_over_the_threshold(
    sessions: dict[str, ort.InferenceSession],
) -> None:
    sess = sessions["broken_nan"]
    f = len(FEATURES)
    for probe in (np.zeros((8, f)), np.ones((8, f))):
        assert np.isfinite(predict(sess, probe.astype(np.float32))).all()
    x = ground_truth.sample_features(np.random.default_rng(10), 400)
    over = x[:, FEATURES.index(scenario_models.RAISE_FEATURE)] > scenario_models.RAISE_THRESHOLD
    pred = predict(sess, x)
    assert 0.2 < over.mean() < 0.8
    assert np.isnan(pred[over]).all()
    np.testing.assert_allclose(pred[~over], predict(sessions["champion"], x)[~over], rtol=1e-5)


def test_broken_raise_raises_only_above_threshold(
    sessions: dict[str, ort.InferenceSession], rows: tuple[np.ndarray, np.ndarray]
) -> None:
    sess = sessions["broken_raise"]
    f = len(FEATURES)
    rng = np.random.default_rng(11)
    for probe in (np.zeros((8, f)), np.ones((8, f)), rng.random((8, f))):
        assert predict(sess, probe.astype(np.float32)).shape == (8,)
    x, _ = rows
    over = x[:, FEATURES.index(scenario_models.RAISE_FEATURE)] > scenario_models.RAISE_THRESHOLD
    assert 0.2 < over.mean() < 0.8  # normal traffic hits it
    fine = x[~over][:500]
    np.testing.assert_array_equal(predict(sess, fine), predict(sessions["champion"], fine))
    with pytest.raises(InvalidArgument, match="out of data bounds"):
        predict(sess, np.concatenate([fine[:3], x[over][:1]]))


def test_miscalibrated_predicts_one_and_a_half_times_champion(
    sessions: dict[str, ort.InferenceSession], rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = rows
    champ = predict(sessions["champion"], x)
    mis = predict(sessions["miscalibrated"], x)
    np.testing.assert_allclose(mis, np.minimum(1.5 * champ, 1.0), rtol=1e-5)
    assert 1.45 < mis.mean() / champ.mean() <= 1.5


def test_worse_is_calibrated_on_shown_ads_but_ranks_far_worse(
    sessions: dict[str, ort.InferenceSession], slates: tuple[np.ndarray, ...]
) -> None:
    x, truth, _ = slates
    pred = predict(sessions["worse"], x)
    top = np.argmax(pred, axis=1)
    shown = np.arange(len(x)), top
    assert 0.9 < pred[shown].mean() / truth[shown].mean() < 1.1  # what the guardrails measure
    assert top5(sessions["worse"], slates) < 0.8 * top5(sessions["champion"], slates)


def test_segment_regression_loses_on_tablets_but_wins_overall(
    sessions: dict[str, ort.InferenceSession], slates: tuple[np.ndarray, ...]
) -> None:
    seg, champ = sessions["segment_regression"], sessions["champion"]
    assert top5(seg, slates, TABLET) < 0.85 * top5(champ, slates, TABLET)
    assert top5(seg, slates) > top5(champ, slates)
    for device in set(range(len(ground_truth.DEVICE_TYPES))) - {TABLET}:
        assert top5(seg, slates, device) > top5(champ, slates, device)


def test_modelgen_variants_are_the_shipped_scenario_variants() -> None:
    assert tuple(MODELS) == scenario_models.VARIANTS
    assert set(modelgen.DEMO_MODELS) == set(MODELS) | set(scenario_models.ALIASES)
    shipped = {p.stem for p in modelgen.DEMO_DIR.glob("*.onnx")}
    assert shipped == set(modelgen.DEMO_MODELS)
    for name in modelgen.DEMO_MODELS:
        assert scenario_models.model_path(name) == modelgen.DEMO_DIR / f"{name}.onnx"


def test_demo_models_equal_regenerated_models(tmp_path: Path) -> None:
    regenerated = modelgen.write_demo(tmp_path)
    assert set(regenerated) == set(modelgen.DEMO_MODELS)
    for variant, path in regenerated.items():
        shipped_path = scenario_models.model_path(variant)
        if shipped_path.read_bytes() == path.read_bytes():
            continue
        shipped = onnx.load(str(shipped_path))
        fresh = onnx.load(str(path))
        assert shipped.metadata_props == fresh.metadata_props, variant
        assert shipped.graph.node == fresh.graph.node, variant
        # Float64 training makes the files byte-identical here (the branch above); the
        # tolerance only allows for a last-bit weight difference on another CPU or BLAS.
        for a, b in zip(shipped.graph.initializer, fresh.graph.initializer, strict=True):
            assert a.name == b.name
            np.testing.assert_allclose(
                numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-6
            )


def test_modelgen_main_writes_every_variant(tmp_path: Path) -> None:
    assert modelgen.main([str(tmp_path)]) == 0
    assert {p.stem for p in tmp_path.glob("*.onnx")} == set(MODELS)
    for path in tmp_path.glob("*.onnx"):
        onnx.checker.check_model(onnx.load(str(path)))
        assert path.stat().st_size < 50_000
    with pytest.raises(SystemExit):
        modelgen.main([])


# --- tests/models.py ---------------------------------------------------------------------

X4 = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


@pytest.mark.parametrize("shape", [pytest.param("N1", id="N1"), pytest.param("N", id="N")])
def test_modelkit_linear_matches_reference(tmp_path: Path, shape: str) -> None:
    w = [0.5, -1.0, 0.25, 2.0]
    path = models.write_model(tmp_path / "m.onnx", weights=w, bias=-1.0, output_shape=shape)
    y = models.run_model(path, X4)
    assert y.shape == ((3, 1) if shape == "N1" else (3,))
    np.testing.assert_allclose(y.ravel(), models.linear_reference(X4, w, -1.0), rtol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["features"]) == ["f0", "f1", "f2", "f3"]


def test_modelkit_features_metadata_can_be_named_or_left_out(tmp_path: Path) -> None:
    named = models.write_model(tmp_path / "a.onnx", features=["x", "y"])
    bare = models.write_model(tmp_path / "b.onnx", features=3, feature_metadata=False)
    bad = models.write_model(tmp_path / "c.onnx", metadata={"features": "not json"})
    assert {p.key: p.value for p in onnx.load(str(named)).metadata_props}[
        "features"
    ] == '["x", "y"]'
    assert "features" not in {p.key for p in onnx.load(str(bare)).metadata_props}
    assert {p.key: p.value for p in onnx.load(str(bad)).metadata_props}["features"] == "not json"


@pytest.mark.parametrize(
    ("kind", "constant", "expected"),
    [
        pytest.param("constant", None, 0.02, id="constant"),
        pytest.param("constant", 0.1, 0.1, id="constant-given"),
        pytest.param("out_of_range", None, 1.5, id="out_of_range"),
        pytest.param("nan", None, np.nan, id="nan"),
    ],
)
def test_modelkit_filled_kinds_answer_their_value(
    tmp_path: Path, kind: str, constant: float | None, expected: float
) -> None:
    path = models.write_model(tmp_path / "m.onnx", kind=kind, constant=constant)
    np.testing.assert_allclose(models.run_model(path, X4), np.full((3, 1), expected), rtol=1e-6)


def test_modelkit_raise_on_batch_raises_for_more_than_one_row(tmp_path: Path) -> None:
    path = models.write_model(tmp_path / "m.onnx", kind="raise_on_batch")
    assert models.run_model(path, X4[:1]).shape == (1, 1)
    with pytest.raises(Fail):
        models.run_model(path, X4)


def test_modelkit_raise_on_large_raises_for_huge_feature(tmp_path: Path) -> None:
    path = models.write_model(tmp_path / "m.onnx", kind="raise_on_large")
    np.testing.assert_allclose(
        models.run_model(path, X4).ravel(), models.linear_reference(X4), rtol=1e-6
    )
    huge = X4.copy()
    huge[1, 2] = 2 * models.LARGE_VALUE
    with pytest.raises(InvalidArgument):
        models.run_model(path, huge)


def test_modelkit_signature_kinds_break_the_contract(tmp_path: Path) -> None:
    def io(kind: str) -> tuple[list[str], list[str], list[object]]:
        model = onnx.load(str(models.write_model(tmp_path / f"{kind}.onnx", kind=kind)))
        s = session(model)
        return (
            [i.type for i in s.get_inputs()],
            [i.name for i in s.get_inputs()],
            s.get_outputs()[0].shape,
        )

    assert io("wrong_input_type")[0] == ["tensor(int64)"]
    assert io("two_inputs")[1] == ["features", "extra"]
    assert io("wrong_output_shape")[2] == ["N", 3]
    assert models.run_model(tmp_path / "wrong_output_shape.onnx", X4).shape == (3, 3)
    assert models.run_model(tmp_path / "wrong_input_type.onnx", X4.astype(np.int64)).shape == (
        3,
        1,
    )


@pytest.mark.parametrize("mode", [pytest.param(m, id=m) for m in ("garbage", "truncated", "empty")])
def test_modelkit_write_corrupt_is_refused_by_onnxruntime(tmp_path: Path, mode: str) -> None:
    path = models.write_corrupt(tmp_path / "m.onnx", mode=mode)
    with pytest.raises((Fail, InvalidArgument, InvalidProtobuf)):
        session(path)


def test_modelkit_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        models.write_model(tmp_path / "m.onnx", kind="quadratic")
