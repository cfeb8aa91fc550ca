"""Small ONNX models that tests build at test time (into tmp_path), one kind per behaviour.

    write_model(tmp_path / "m.onnx", features=["a", "b"], kind="linear", weights=[1.0, -1.0])

Every kind takes a float32 input "features" of shape [N, F] unless said otherwise. The
defaults (weights 0.1 each, bias -3.9) answer CTR-like values, about 2% for small inputs.

- "linear": sigmoid(x @ weights + bias).
- "constant": `constant` (default 0.02) for every row.
- "nan": NaN for every row.
- "out_of_range": `constant` (default 1.5) for every row — outside [0, 1].
- "nan_on_large", "out_of_range_on_large", "raise_on_large": the linear model, except for rows
  with a feature above LARGE_VALUE: those answer NaN, answer above 1, or make the run raise (a
  Gather with an out-of-range index). The load-time probe (ordinary values) passes, so the
  model registers and breaks only on live traffic that sends a large value.
- "raise_on_batch": the linear model, but a run with N > 1 raises (a Reshape to [1, 1]);
  a single row works. A load-time probe with several rows fails.
- "wrong_input_type": the linear model over an int64 input.
- "two_inputs": two float32 inputs "features" and "extra", both [N, F]; output = linear(a + b).
- "wrong_output_shape": output [N, 3] (three sigmoids).
- "slow": the linear model plus zero times the result of a Loop of `iterations` (default
  2,000) 256×256 MatMul+Tanh steps: slow by construction (~0.6 s a run on a 2-core test
  machine, whatever the batch), and made of many kernels, so a run can be cut between them.

`output_shape` "N1" gives [N, 1] outputs, "N" gives [N] (not for "wrong_output_shape").
The feature names go into metadata_props["features"] unless `feature_metadata` is False.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
INPUT_NAME = "features"
OUTPUT_NAME = "ctr"
NAME = "tiny"  # a registered model is labelled "tiny:<version>"
BIAS = -3.9  # sigmoid(-3.9) ≈ 2%: predictions look like click-through rates
LARGE_VALUE = 1e6  # the *_on_large kinds break for rows with a feature above this
KINDS = (
    "linear",
    "constant",
    "nan",
    "out_of_range",
    "nan_on_large",
    "out_of_range_on_large",
    "raise_on_large",
    "raise_on_batch",
    "wrong_input_type",
    "two_inputs",
    "wrong_output_shape",
    "slow",
)
SLOW_SIDE = 256  # the slow kind's Loop state is SLOW_SIDE × SLOW_SIDE


def feature_names(features: Sequence[str] | int) -> list[str]:
    """The names a model gets: the list as given, or f0 … f{n-1} for a count."""
    return [f"f{i}" for i in range(features)] if isinstance(features, int) else list(features)


def write_model(
    path: Path | str,
    *,
    features: Sequence[str] | int = 4,
    kind: str = "linear",
    weights: Sequence[float] | np.ndarray | None = None,
    bias: float = BIAS,
    output_shape: str = "N1",
    constant: float | None = None,
    name: str = NAME,
    feature_metadata: bool = True,
    metadata: dict[str, str] | None = None,
    iterations: int = 2000,
) -> Path:
    """Write a small ONNX model of `kind` (see the module docstring) to `path`; return the path.

    `metadata` entries are added to (and override) the default metadata_props, e.g.
    ``{"features": "not json"}`` to test a malformed feature list.
    """
    path = Path(path)
    model = build_model(
        features=features,
        kind=kind,
        weights=weights,
        bias=bias,
        output_shape=output_shape,
        constant=constant,
        name=name,
        feature_metadata=feature_metadata,
        metadata=metadata,
        iterations=iterations,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def build_model(
    *,
    features: Sequence[str] | int = 4,
    kind: str = "linear",
    weights: Sequence[float] | np.ndarray | None = None,
    bias: float = BIAS,
    output_shape: str = "N1",
    constant: float | None = None,
    name: str = NAME,
    feature_metadata: bool = True,
    metadata: dict[str, str] | None = None,
    iterations: int = 2000,
) -> onnx.ModelProto:
    """The model `write_model` writes, as an onnx.ModelProto."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if output_shape not in ("N1", "N"):
        raise ValueError(f"output_shape must be 'N1' or 'N', not {output_shape!r}")
    names = feature_names(features)
    n_features = len(names)
    w = np.full(n_features, 0.1) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_features,):
        raise ValueError(f"weights has shape {w.shape}, expected ({n_features},)")

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(value: object, dtype: type = np.float32) -> str:
        tensor_name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), tensor_name))
        return tensor_name

    def op(op_type: str, *inputs: str, **attrs: Any) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    x = INPUT_NAME
    input_type = TensorProto.FLOAT
    inputs = [x]
    if kind == "wrong_input_type":
        input_type = TensorProto.INT64
        x = op("Cast", x, to=TensorProto.FLOAT)
    elif kind == "two_inputs":
        inputs.append("extra")
        x = op("Add", x, "extra")

    def linear(cols: int = 1) -> str:
        matrix = np.tile(w[:, None], (1, cols))
        return op("Sigmoid", op("Add", op("MatMul", x, const(matrix)), const(bias)))

    def filled(value: float) -> str:
        zero_sum = op("ReduceSum", op("Mul", x, const(0.0)), const([1], np.int64), keepdims=1)
        return op("Add", zero_sum, const(value))

    def large_count() -> str:
        """[N, 1]: how many features of each row are above LARGE_VALUE."""
        too_large = op("Cast", op("Greater", x, const(LARGE_VALUE)), to=TensorProto.FLOAT)
        return op("ReduceSum", too_large, const([1], np.int64), keepdims=1)

    def slow_zero(n: int) -> str:
        """A scalar 0 that takes `n` Loop steps of a SLOW_SIDE² MatMul and Tanh to compute."""
        side = SLOW_SIDE
        body = helper.make_graph(
            [
                helper.make_node("MatMul", ["state_in", "body_w"], ["product"]),
                helper.make_node("Tanh", ["product"], ["state_out"]),
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            ],
            "slow_body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [side, side]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [side, side]),
            ],
            initializer=[numpy_helper.from_array(np.eye(side, dtype=np.float32) * 0.5, "body_w")],
        )
        # The start depends on the input, so no optimizer can fold the Loop at load.
        no_input = op("Mul", op("ReduceSum", x, keepdims=0), const(0.0))
        start = op("Add", const(np.eye(side)), no_input)
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node("Loop", [const(n, np.int64), "", start], [out], body=body))
        return op("Mul", op("ReduceSum", out, keepdims=0), const(0.0))

    if kind in ("linear", "wrong_input_type", "two_inputs"):
        y = linear()
    elif kind == "constant":
        y = filled(0.02 if constant is None else constant)
    elif kind == "out_of_range":
        y = filled(1.5 if constant is None else constant)
    elif kind == "nan":
        y = op("Sqrt", filled(-1.0))
    elif kind == "nan_on_large":
        # sqrt(-count): 0 for ordinary rows, NaN where a feature is large.
        y = op("Add", linear(), op("Sqrt", op("Neg", large_count())))
    elif kind == "out_of_range_on_large":
        y = op("Add", linear(), large_count())  # a positive probability plus >= 1
    elif kind == "raise_on_large":
        too_large = op("Greater", x, const(LARGE_VALUE))
        index = op("Mul", op("Cast", too_large, to=TensorProto.INT64), const(1000, np.int64))
        picked = op("Gather", const([0.0]), index, axis=0)  # [N, F]; raises for index 1000
        zero = op("ReduceSum", picked, const([1], np.int64), keepdims=1)
        y = op("Add", linear(), zero)
    elif kind == "slow":
        y = op("Add", linear(), slow_zero(iterations))
    elif kind == "raise_on_batch":
        y = op("Reshape", linear(), const([1, 1], np.int64))
    else:  # wrong_output_shape
        y = linear(cols=3)

    out_dims: list[str | int] = ["N", 3] if kind == "wrong_output_shape" else ["N", 1]
    if output_shape == "N" and kind != "wrong_output_shape":
        y = op("Squeeze", y, const([1], np.int64))
        out_dims = ["N"]
    nodes[-1].output[0] = OUTPUT_NAME

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(i, input_type, ["N", n_features]) for i in inputs],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_dims)],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="rampart-tests",
    )
    props = {"name": name}
    if feature_metadata:
        props["features"] = json.dumps(names)
    props.update(metadata or {})
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_corrupt(path: Path | str, *, mode: str = "garbage") -> Path:
    """Write a file that is not a loadable ONNX model; return the path.

    Modes: "garbage" (bytes that do not parse as a protobuf), "truncated" (the first half of a
    valid model), "empty" (zero bytes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "garbage":
        data = b"\xff\xfe not an onnx model \x00\x01" * 8
    elif mode == "truncated":
        valid = build_model().SerializeToString()
        data = valid[: len(valid) // 2]
    elif mode == "empty":
        data = b""
    else:
        raise ValueError(f"unknown mode {mode!r}; expected garbage, truncated or empty")
    path.write_bytes(data)
    return path


def linear_reference(
    x: np.ndarray, weights: Sequence[float] | np.ndarray | None = None, bias: float = BIAS
) -> np.ndarray:
    """What a "linear" model predicts for rows `x` ([N, F] → [N]), in NumPy."""
    x = np.asarray(x, dtype=np.float64)
    w = np.full(x.shape[1], 0.1) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.asarray(1.0 / (1.0 + np.exp(-(x @ w + bias))))


def run_model(path: Path | str, x: np.ndarray) -> np.ndarray:
    """Run a model file once in onnxruntime (one thread) and return its first output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x for i in session.get_inputs()}
    return np.asarray(session.run(None, feed)[0])
