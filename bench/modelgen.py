"""The ONNX models the harness rolls out in the synthetic world of `harness.ground_truth`.

Every model is a small MLP (or a deliberately broken graph) built with `onnx.helper` and fitted
to the world's ground truth with a few hundred full-batch Adam steps in NumPy, so
``python -m bench.modelgen OUTDIR`` writes the same models on every run::

    python -m bench.modelgen /tmp/models          # every variant, <variant>.onnx
    python -m bench.modelgen --demo               # every variant into harness/models/ (shipped)

Variants (see `MODELS`): champion, challenger_better, broken_constant, broken_nan, broken_raise,
miscalibrated, worse, segment_regression. There is no slow model: the `slow` scenario slows an
ordinary challenger down in the server (`[faults] challenger_delay_ms`), the same on any CPU.
onnx is a test-only dependency: the harness, which runs on a base install, ships these files
(`harness.scenario_models`) and never imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.ground_truth import COLUMN as _COL
from harness.ground_truth import FEATURES, ground_truth_ctr, sample_features, sample_requests
from harness.ground_truth import sigmoid as _sigmoid
from harness.scenario_models import (
    ALIASES,
    MODELS_DIR,
    RAISE_FEATURE,
    RAISE_THRESHOLD,
    REGRESSED_DEVICE,
    WORSE_RELEVANCE_CAP,
)

SEED = 20240611
OPSET = 17
IR_VERSION = 9  # onnxruntime 1.18 reads IR versions up to 9
INPUT_NAME = "features"
OUTPUT_NAME = "ctr"
DEMO_DIR = MODELS_DIR


# --- fitting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mlp:
    """sigmoid(relu(min(x, cap) @ w1 + b1) @ w2 + b2), on raw (unstandardized) features."""

    w1: np.ndarray  # [F, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H, 1]
    b2: np.ndarray  # [1]
    cap: np.ndarray | None = None  # [F] upper bound applied to the input, or no bound

    def logit(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.cap is not None:
            x = np.minimum(x, self.cap)
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return np.asarray((h @ self.w2 + self.b2)[..., 0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logit(x))


def fit_mlp(
    x: np.ndarray,
    target: np.ndarray,
    *,
    exclude: Sequence[str] = (),
    cap: np.ndarray | None = None,
    hidden: int = 16,
    steps: int = 400,
    lr: float = 0.02,
    seed: int = SEED,
) -> Mlp:
    """Fit an MLP to click probabilities `target` by full-batch Adam on the logistic loss.

    Soft labels (the true probabilities, not sampled clicks) make the fit smooth and
    deterministic. Features in `exclude` get zero input weights: the model does not use them.
    With `cap`, the model sees min(x, cap) in training and in the graph.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    if cap is not None:
        x = np.minimum(x, cap)
    used = np.array([name not in exclude for name in FEATURES])
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = np.where(used, (x - mu) / sd, 0.0)
    n, f = xs.shape
    params = [
        rng.standard_normal((f, hidden)) * np.sqrt(2.0 / f),
        np.full(hidden, 0.1),
        rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden),
        np.array([_logit(float(np.mean(target)))]),
    ]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    y = np.asarray(target, dtype=np.float64)[:, None]
    for t in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = xs @ w1 + b1
        h = np.maximum(pre, 0.0)
        dz = (_sigmoid(h @ w2 + b2) - y) / n
        dh = (dz @ w2.T) * (pre > 0)
        grads = [xs.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            step = lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
            params[i] = params[i] - step
    w1, b1, w2, b2 = params
    # Fold the standardization into the first layer so the ONNX model takes raw features.
    w1_raw = np.where(used[:, None], w1 / sd[:, None], 0.0)
    return Mlp(w1=w1_raw, b1=b1 - mu @ w1_raw, w2=w2, b2=b2, cap=cap)


def recalibrate(mlp: Mlp, x: np.ndarray, mean_ctr: float) -> Mlp:
    """Shift the output bias so the mean prediction over `x` equals `mean_ctr` (bisection)."""
    z = mlp.logit(x)
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(_sigmoid(z + mid)) < mean_ctr else (lo, mid)
    return dataclasses.replace(mlp, b2=mlp.b2 + (lo + hi) / 2)


def recalibrate_shown(mlp: Mlp, n: int = 5000, k: int = 4) -> Mlp:
    """Shift the output bias so the mean prediction of the candidate the model would show
    (its top score of k) equals that candidate's mean true CTR: calibrated where the
    guardrails measure it, on the ads shown (a shift moves no ranking)."""
    x = sample_requests(np.random.default_rng(SEED + 7), n, k)
    z = mlp.logit(x.reshape(n * k, -1)).reshape(n, k)
    top = np.argmax(z, axis=1)
    shown = z[np.arange(n), top]
    target = float(ground_truth_ctr(x)[np.arange(n), top].mean())
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(_sigmoid(shown + mid)) < target else (lo, mid)
    return dataclasses.replace(mlp, b2=mlp.b2 + (lo + hi) / 2)


@functools.cache
def _training_set() -> tuple[np.ndarray, np.ndarray]:
    x = sample_features(np.random.default_rng(SEED), 10_000)
    return x, ground_truth_ctr(x)


@functools.cache
def fitted(variant: str) -> Mlp:
    """The fitted network behind a variant: "champion", "challenger" or "worse" (cached)."""
    x, p = _training_set()
    if variant == "champion":
        return fit_mlp(x, p, exclude=["user_interest_match", "ad_historical_ctr"], seed=SEED + 1)
    if variant == "challenger":
        return fit_mlp(x, p, seed=SEED + 2, steps=600)
    if variant == "worse":
        cap = np.full(len(FEATURES), np.inf)
        cap[_COL["ad_relevance"]] = WORSE_RELEVANCE_CAP
        blind = ["user_interest_match", "ad_historical_ctr"]
        mlp = fit_mlp(x, p, exclude=blind, cap=cap, seed=SEED + 3)
        return recalibrate_shown(mlp)
    raise ValueError(f"unknown fitted variant {variant!r}")


# How hard segment_regression mis-ranks on tablets: about -28% CTR of the shown ad there (its
# predictions there 1.12x), and +3.7% overall: the challenger's +10% elsewhere carries it.
REGRESSION_STRENGTH = 1.3


def _segment_regression_mlp() -> Mlp:
    """The challenger plus two hidden units that are live only on `REGRESSED_DEVICE` rows.

    There they swap part of the true ad signal for bid price (which does not move clicks), so
    the model mis-ranks candidates on that device and is unchanged elsewhere. A unit
    relu(u + M·tablet − M) is u on tablet rows and 0 elsewhere while |u| < M; the pair
    relu(u …) − relu(−u …) adds the term u = x·v + c on tablets. c centres u (interest has
    mean 0.4, the rest mean 0) so the tablet predictions keep roughly their level.
    """
    base = fitted("challenger")
    k = REGRESSION_STRENGTH
    v = np.zeros(len(FEATURES))
    v[_COL["ad_relevance"]] = -0.5 * k
    v[_COL["ad_historical_ctr"]] = -0.3 * k
    v[_COL["user_interest_match"]] = -0.8 * k
    v[_COL["bid_price_log"]] = 0.55 * k
    c = 0.8 * 0.4 * k
    big = 100.0
    gate = np.zeros(len(FEATURES))
    gate[_COL[f"device_{REGRESSED_DEVICE}"]] = big
    return Mlp(
        w1=np.concatenate([base.w1, np.stack([v + gate, -v + gate], axis=1)], axis=1),
        b1=np.concatenate([base.b1, [c - big, -c - big]]),
        w2=np.concatenate([base.w2, [[1.0], [-1.0]]]),
        b2=base.b2,
    )


# --- ONNX graphs ---------------------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers; `op` returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | float | Sequence[int]) -> str:
        arr = np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        name = out or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def mlp_logit(self, mlp: Mlp) -> str:
        x = INPUT_NAME
        if mlp.cap is not None:
            x = self.op("Min", [x, self.const("cap", mlp.cap)])
        h = self.op("MatMul", [x, self.const("w1", mlp.w1)])
        h = self.op("Relu", [self.op("Add", [h, self.const("b1", mlp.b1)])])
        z = self.op("MatMul", [h, self.const("w2", mlp.w2)])
        return self.op("Add", [z, self.const("b2", mlp.b2)])

    def zero_row_sum(self) -> str:
        """0 · Σ_j x[:, j] as [N, 1]: ties an output to the input without changing it."""
        x0 = self.op("Mul", [INPUT_NAME, self.const("zero", 0.0)])
        return self.op("ReduceSum", [x0, self.const("axis1", [1])], keepdims=1)

    def model(self, name: str, description: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", len(FEATURES)])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="rampart-modelgen",
        )
        meta = {"features": json.dumps(FEATURES), "name": name, "description": description}
        helper.set_model_props(model, meta)
        onnx.checker.check_model(model, full_check=True)
        return model


def _mlp_model(mlp: Mlp, name: str, description: str) -> onnx.ModelProto:
    g = _Graph()
    g.op("Sigmoid", [g.mlp_logit(mlp)], out=OUTPUT_NAME)
    return g.model(name, description)


def champion() -> onnx.ModelProto:
    """30 → 16 → 1 MLP fitted to the ground truth without user_interest_match and
    ad_historical_ctr: the production model the challengers are measured against."""
    return _mlp_model(
        fitted("champion"),
        "ctr-mlp",
        "Champion: MLP 30-16-1 fitted without user_interest_match and ad_historical_ctr.",
    )


def challenger_better() -> onnx.ModelProto:
    """Fitted on every feature: it ranks candidates better (about +10% CTR of the shown ad)."""
    return _mlp_model(
        fitted("challenger"),
        "ctr-mlp",
        "Challenger: MLP 30-16-1 fitted to the ground truth on all features; ranks better.",
    )


def worse() -> onnx.ModelProto:
    """Calibrated on the ads it shows, but ranks far worse than the champion (about -30% CTR
    of the shown ad).

    Fitted like the champion, but blind to ad_historical_ctr and with ad_relevance capped at
    `WORSE_RELEVANCE_CAP`, so it cannot tell good ads from the best ones; its bias is then set
    so the predicted CTR of the ads it shows matches their true CTR (`recalibrate_shown`).
    """
    return _mlp_model(
        fitted("worse"),
        "ctr-mlp-worse",
        f"Worse: no ad_historical_ctr, ad_relevance capped at {WORSE_RELEVANCE_CAP}.",
    )


def segment_regression() -> onnx.ModelProto:
    """The challenger, but mis-ranking candidates on tablets (see _segment_regression_mlp)."""
    return _mlp_model(
        _segment_regression_mlp(),
        "ctr-mlp-segment-regression",
        f"Segment regression: the challenger, but ranks by bid price on {REGRESSED_DEVICE}s.",
    )


def miscalibrated() -> onnx.ModelProto:
    """The champion's predictions × 1.5, clipped to ≤ 1: same ranking, over-predicts."""
    g = _Graph()
    p = g.op("Mul", [g.op("Sigmoid", [g.mlp_logit(fitted("champion"))]), g.const("scale", 1.5)])
    g.op("Min", [p, g.const("one", 1.0)], out=OUTPUT_NAME)
    return g.model("ctr-mlp-miscalibrated", "Miscalibrated: champion predictions x 1.5, clipped.")


def broken_constant() -> onnx.ModelProto:
    """0.02 for every row, whatever the input."""
    g = _Graph()
    g.op("Add", [g.zero_row_sum(), g.const("ctr_constant", 0.02)], out=OUTPUT_NAME)
    return g.model("ctr-broken-constant", "Broken: predicts 0.02 for every row.")


def broken_nan() -> onnx.ModelProto:
    """The champion, except NaN for rows with RAISE_FEATURE > RAISE_THRESHOLD (~42% of live
    rows): sigmoid(z) + sqrt(-over). The registry's probe rows stay below the threshold, so
    the model loads and fails only on live traffic, as a feature-pipeline bug would."""
    g = _Graph()
    column = g.op("Gather", [INPUT_NAME, g.const("nan_column", [_COL[RAISE_FEATURE]])], axis=1)
    over = g.op("Greater", [column, g.const("nan_threshold", RAISE_THRESHOLD)])
    negative = g.op("Neg", [g.op("Cast", [over], to=TensorProto.FLOAT)])
    y = g.op("Sigmoid", [g.mlp_logit(fitted("champion"))])
    g.op("Add", [y, g.op("Sqrt", [negative])], out=OUTPUT_NAME)
    return g.model(
        "ctr-mlp-broken-nan",
        f"Broken: the champion, but NaN for rows with {RAISE_FEATURE} > {RAISE_THRESHOLD}.",
    )


def broken_raise() -> onnx.ModelProto:
    """The champion, except that a run raises when any row has RAISE_FEATURE > RAISE_THRESHOLD.

    A Gather reads index 0 of a one-element table for normal rows and index 1000 for rows over
    the threshold, so onnxruntime fails the whole run with INVALID_ARGUMENT ("indices element
    out of data bounds"). A load-time probe of zeros, ones or uniform [0, 1) rows passes;
    about 42% of the rows of sample_features() are over the threshold.
    """
    g = _Graph()
    column = g.op("Gather", [INPUT_NAME, g.const("raise_column", [_COL[RAISE_FEATURE]])], axis=1)
    over = g.op("Greater", [column, g.const("raise_threshold", RAISE_THRESHOLD)])
    index = g.op("Mul", [g.op("Cast", [over], to=TensorProto.INT64), g.const("bad_index", 1000)])
    picked = g.op("Gather", [g.const("table", np.array([0.0])), index], axis=0)  # [N, 1]
    z = g.op("Add", [g.mlp_logit(fitted("champion")), picked])
    g.op("Sigmoid", [z], out=OUTPUT_NAME)
    return g.model(
        "ctr-mlp-broken-raise",
        f"Broken: the champion, but raises when any row has {RAISE_FEATURE} > {RAISE_THRESHOLD}.",
    )


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "champion": champion,
    "challenger_better": challenger_better,
    "broken_constant": broken_constant,
    "broken_nan": broken_nan,
    "broken_raise": broken_raise,
    "miscalibrated": miscalibrated,
    "worse": worse,
    "segment_regression": segment_regression,
}
# What ships in harness/models/: every variant, plus the aliases `rampart demo` loads.
DEMO_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    **MODELS,
    **{alias: MODELS[variant] for alias, variant in ALIASES.items()},
}


def write_all(outdir: Path | str) -> dict[str, Path]:
    """Write every variant to OUTDIR/<variant>.onnx; returns the paths by variant."""
    return _write(MODELS, Path(outdir))


def write_demo(outdir: Path | str = DEMO_DIR) -> dict[str, Path]:
    """Write every variant and alias (see `DEMO_MODELS`), by default into harness/models/."""
    return _write(DEMO_MODELS, Path(outdir))


def _write(models: dict[str, Callable[[], onnx.ModelProto]], outdir: Path) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for variant, build in models.items():
        path = outdir / f"{variant}.onnx"
        path.write_bytes(build().SerializeToString())
        paths[variant] = path
    return paths


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modelgen", description=__doc__)
    parser.add_argument("outdir", nargs="?", type=Path, help="write every variant here")
    parser.add_argument("--demo", action="store_true", help="regenerate harness/models/*.onnx")
    args = parser.parse_args(argv)
    if args.outdir is None and not args.demo:
        parser.error("give OUTDIR, --demo, or both")
    written = {}
    if args.outdir is not None:
        written.update({f"{k}": p for k, p in write_all(args.outdir).items()})
    if args.demo:
        written.update({f"demo/{k}": p for k, p in write_demo().items()})
    for variant, path in written.items():
        print(f"{variant:28s} {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
