"""ONNX model sessions: loading, validation, and turning request rows into inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

PROBE_ROWS = 8


class ModelError(ValueError):
    """A model file that cannot serve, with the file and the problem named."""


def session_options() -> ort.SessionOptions:
    # Imported here, not with the module: the evaluator reads the registry (whose records
    # this module's Model validates) but never runs a model, and onnxruntime is ~12 MB
    # resident in each process that imports it.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One intra-op thread: no thread pool, no spinning threads stealing the
    # event loop's core. Spinning is also turned off explicitly.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class Model:
    """One loaded, validated model: `predict` takes a float32 [N, F] array."""

    def __init__(self, path: Path, version: int = 0) -> None:
        self.path = path
        self.version = version
        if not path.is_file():
            raise ModelError(f"{path}: model file does not exist")
        import onnxruntime as ort

        try:
            self._session = ort.InferenceSession(
                str(path), session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises several unrelated types
            raise ModelError(f"{path}: not a loadable ONNX model: {e}") from None
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: expected one input, found {len(inputs)}")
        if len(outputs) < 1:
            raise ModelError(f"{path}: the model has no output")
        inp, out = inputs[0], outputs[0]
        if inp.type != "tensor(float)":
            raise ModelError(f"{path}: input '{inp.name}' is {inp.type}, expected tensor(float)")
        if len(inp.shape) != 2:
            raise ModelError(f"{path}: input '{inp.name}' has shape {inp.shape}, expected [N, F]")
        if out.type != "tensor(float)":
            raise ModelError(f"{path}: output '{out.name}' is {out.type}, expected tensor(float)")
        meta = self._session.get_modelmeta().custom_metadata_map
        width = inp.shape[1] if isinstance(inp.shape[1], int) else None
        self.features = self._feature_names(meta.get("features"), width)
        self.width = len(self.features)
        self.name = meta.get("name") or path.stem
        self.description = meta.get("description", "")
        self._input = inp.name
        self._outputs = [out.name]
        # The session's own binding, without the Python wrapper of `InferenceSession.run`
        # (~2.5 µs a call: it checks every input is fed, graph capture, OrtValue owners,
        # and retries on a GPU provider's failure; this one CPU input is fed every time).
        # The probe below runs through it, so a release without it fails at load.
        binding: Any = getattr(self._session, "_sess", None)
        self._run = binding.run if hasattr(binding, "run") else self._session.run
        self._probe()
        self.label = f"{self.name}:{version}"
        self.index = {name: i for i, name in enumerate(self.features)}

    def _feature_names(self, raw: str | None, width: int | None) -> tuple[str, ...]:
        if raw is None:
            if width is None:
                raise ModelError(
                    f"{self.path}: input width is dynamic and metadata has no 'features' list"
                )
            return tuple(f"f{i}" for i in range(width))
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            raise ModelError(f"{self.path}: metadata 'features' is not JSON") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError(f"{self.path}: metadata 'features' must be a JSON list of strings")
        if len(set(names)) != len(names):
            raise ModelError(f"{self.path}: metadata 'features' names a feature twice")
        if width is not None and len(names) != width:
            raise ModelError(
                f"{self.path}: metadata lists {len(names)} features but the input takes {width}"
            )
        return tuple(names)

    def _probe(self) -> None:
        rng = np.random.default_rng(0)
        batch = np.vstack(
            [np.zeros((1, self.width)), rng.normal(size=(PROBE_ROWS - 1, self.width))]
        ).astype(np.float32)
        try:
            out = self.predict(batch)
        except Exception as e:
            raise ModelError(f"{self.path}: the probe batch raised: {e}") from None
        if out.shape not in ((PROBE_ROWS,), (PROBE_ROWS, 1)):
            raise ModelError(
                f"{self.path}: output shape {list(out.shape)} for {PROBE_ROWS} rows, "
                f"expected [{PROBE_ROWS}, 1] or [{PROBE_ROWS}]"
            )
        if not (np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))):
            raise ModelError(f"{self.path}: probe predictions are not all finite values in [0, 1]")

    def predict(self, x: np.ndarray, options: ort.RunOptions | None = None) -> np.ndarray:
        out: np.ndarray = self._run(self._outputs, {self._input: x}, options)[0]
        return out

    def columns_from(self, features: tuple[str, ...]) -> np.ndarray | None:
        """Column indices taking this model's inputs from rows in `features` order,
        or None when some input is not there."""
        where = {name: i for i, name in enumerate(features)}
        try:
            return np.array([where[name] for name in self.features], dtype=np.intp)
        except KeyError:
            return None
