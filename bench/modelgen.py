"""A synthetic click-through-rate world and the ONNX models the harness rolls out in it.

The world is deterministic: `FEATURES` names 30 ad-serving features, `sample_features` and
`sample_requests` draw rows from a seeded generator, and `ground_truth_ctr` is the true click
probability of a row. Every model is a small MLP (or a deliberately broken graph) built with
`onnx.helper` and fitted to that truth with a few hundred full-batch Adam steps in NumPy, so
``python -m bench.modelgen OUTDIR`` writes the same models on every run::

    python -m bench.modelgen /tmp/models          # every variant, <variant>.onnx
    python -m bench.modelgen --demo               # router/demo/champion.onnx, challenger.onnx

Variants (see `MODELS`): champion, challenger_better, broken_constant, broken_nan, broken_raise,
slow, miscalibrated, worse, segment_regression.
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

SEED = 20240611
OPSET = 17
IR_VERSION = 9  # onnxruntime 1.18 reads IR versions up to 9
INPUT_NAME = "features"
OUTPUT_NAME = "ctr"
DEMO_DIR = Path(__file__).resolve().parent.parent / "router" / "demo"

# Context features are shared by every candidate of one request; ad features differ between them.
CONTEXT_FEATURES: list[str] = [
    "user_age_bucket",  # 0..6 scaled to [0, 1]
    "user_is_returning",
    "user_click_propensity",  # standardized historical click rate of the user
    "user_sessions_7d_log",  # log1p(sessions in the last 7 days)
    "user_ad_fatigue",  # share of the last hour's page views that showed ads, [0, 1]
    "hour_sin",
    "hour_cos",
    "is_weekend",
    "device_mobile",
    "device_desktop",
    "device_tablet",
    "os_ios",
    "os_android",
    "country_tier1",
    "country_tier2",
    "publisher_quality",  # [0, 1]
    "publisher_news",
    "publisher_sports",
    "publisher_games",
    "slot_above_fold",
]
AD_FEATURES: list[str] = [
    "ad_relevance",  # standardized
    "ad_historical_ctr",  # standardized, correlated with relevance
    "advertiser_quality",  # [0, 1]
    "creative_video",
    "creative_native",
    "ad_size_large",
    "bid_price_log",  # standardized; has no effect on clicks
    "user_interest_match",  # [0, 1]; the signal the champion does not use
    "creative_age_days_log",
    "landing_page_speed",  # standardized
]
FEATURES: list[str] = CONTEXT_FEATURES + AD_FEATURES
_COL = {name: i for i, name in enumerate(FEATURES)}

DEVICE_TYPES = ("mobile", "desktop", "tablet")
COUNTRY_TIERS = ("tier1", "tier2", "tier3")
PUBLISHER_CATEGORIES = ("news", "sports", "games", "other")
CREATIVE_TYPES = ("video", "native", "image")
# The device whose ranking segment_regression breaks.
REGRESSED_DEVICE = "tablet"
# broken_raise raises iff a row of the batch has this feature above the threshold.
RAISE_FEATURE = "user_sessions_7d_log"
RAISE_THRESHOLD = 3.0

# Ground truth: logit = bias + linear terms + the nonlinear terms in ground_truth_logit().
_TRUE_WEIGHTS: dict[str, float] = {
    "user_is_returning": 0.15,
    "user_click_propensity": 1.60,
    "user_sessions_7d_log": 0.08,
    "hour_sin": 0.15,
    "hour_cos": 0.10,
    "is_weekend": 0.05,
    "os_ios": 0.10,
    "country_tier1": 0.15,
    "country_tier2": 0.05,
    "publisher_quality": 1.00,
    "publisher_news": -0.10,
    "publisher_sports": 0.10,
    "publisher_games": 0.20,
    "slot_above_fold": 0.30,
    "ad_relevance": 0.55,
    "ad_historical_ctr": 0.35,
    "advertiser_quality": 0.40,
    "creative_video": 0.20,
    "creative_native": 0.15,
    "ad_size_large": 0.10,
    "user_interest_match": 1.60,
    "creative_age_days_log": -0.15,
    "landing_page_speed": 0.10,
}
_TRUE_BIAS = -7.45  # puts the mean CTR of sample_features() near 2%
_DEVICE_OFFSET = np.array([0.20, -0.10, 0.0])  # mobile, desktop, tablet


def device_index(x: np.ndarray) -> np.ndarray:
    """Index into `DEVICE_TYPES` of each row, from its one-hot device columns."""
    cols = [_COL["device_mobile"], _COL["device_desktop"], _COL["device_tablet"]]
    return np.asarray(np.argmax(np.asarray(x)[..., cols], axis=-1), dtype=np.int64)


def ground_truth_logit(x: np.ndarray, device_index: np.ndarray | None = None) -> np.ndarray:
    """The true click log-odds of rows `x` (shape [..., F]); see `ground_truth_ctr`."""
    x = np.asarray(x, dtype=np.float64)
    dev = _device_of(x, device_index)

    def c(name: str) -> np.ndarray:
        return x[..., _COL[name]]

    w = np.array([_TRUE_WEIGHTS.get(name, 0.0) for name in FEATURES])
    mobile, tablet = dev == 0, dev == 2
    return (
        _TRUE_BIAS
        + x @ w
        + _DEVICE_OFFSET[dev]
        - 1.2 * (c("user_age_bucket") - 0.45) ** 2
        - 0.9 * c("user_ad_fatigue") ** 2
        + 0.6 * c("user_interest_match") * c("ad_relevance")
        + mobile * 0.35 * c("slot_above_fold")
        + tablet * (0.5 * c("ad_size_large") + 0.4 * c("creative_video"))
    )


def ground_truth_ctr(x: np.ndarray, device_index: np.ndarray | None = None) -> np.ndarray:
    """The true click probability of each row of `x` (shape [..., F] → [...], float64).

    sigmoid(w·x + b + small nonlinear terms): a quadratic age curve, ad fatigue squared, a
    relevance × interest interaction, and device-specific terms (above-the-fold slots matter more
    on mobile; large and video creatives do better on tablets). `device_index` (0 mobile,
    1 desktop, 2 tablet) overrides the device read from the one-hot device columns.
    """
    return _sigmoid(ground_truth_logit(x, device_index))


def sample_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` independent rows (float32, shape [n, F]), each with its own context."""
    return sample_requests(rng, n, 1)[:, 0, :]


def sample_requests(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """`n` requests of `k` candidate ads each (float32, shape [n, k, F]).

    The candidates of one request share its context features (user, time, device, geo,
    publisher, slot) and differ in their ad features, as when the ad server ranks several ads
    for one slot.
    """
    x = np.zeros((n, k, len(FEATURES)), dtype=np.float64)

    def put(name: str, values: np.ndarray, shared: bool) -> None:
        x[..., _COL[name]] = values[:, None] if shared else values

    def one_hot(
        names: Sequence[str | None], probs: Sequence[float], shape: tuple[int, ...]
    ) -> None:
        pick = rng.choice(len(names), size=shape, p=probs)
        for i, name in enumerate(names):
            if name is not None:
                put(name, (pick == i).astype(np.float64), len(shape) == 1)

    # Context, one draw per request.
    put("user_age_bucket", rng.integers(0, 7, n) / 6.0, True)
    put("user_is_returning", (rng.random(n) < 0.6).astype(np.float64), True)
    put("user_click_propensity", rng.standard_normal(n), True)
    put("user_sessions_7d_log", np.log1p(rng.poisson(rng.gamma(2.0, 10.0, n))), True)
    put("user_ad_fatigue", rng.beta(1.5, 3.0, n), True)
    hour = rng.integers(0, 24, n) * (2 * np.pi / 24)
    put("hour_sin", np.sin(hour), True)
    put("hour_cos", np.cos(hour), True)
    put("is_weekend", (rng.random(n) < 2 / 7).astype(np.float64), True)
    device = rng.choice(3, size=n, p=[0.55, 0.30, 0.15])
    for i, name in enumerate(("device_mobile", "device_desktop", "device_tablet")):
        put(name, (device == i).astype(np.float64), True)
    ios = rng.random(n) < 0.45
    put("os_ios", ((device != 1) & ios).astype(np.float64), True)
    put("os_android", ((device != 1) & ~ios).astype(np.float64), True)
    one_hot(["country_tier1", "country_tier2", None], [0.5, 0.3, 0.2], (n,))
    put("publisher_quality", rng.beta(4.0, 2.0, n), True)
    one_hot(
        ["publisher_news", "publisher_sports", "publisher_games", None],
        [0.3, 0.2, 0.15, 0.35],
        (n,),
    )
    put("slot_above_fold", (rng.random(n) < 0.45).astype(np.float64), True)
    # Ads, one draw per candidate.
    relevance = rng.standard_normal((n, k))
    put("ad_relevance", relevance, False)
    put("ad_historical_ctr", 0.3 * relevance + 0.954 * rng.standard_normal((n, k)), False)
    put("advertiser_quality", rng.beta(3.0, 2.0, (n, k)), False)
    one_hot(["creative_video", "creative_native", None], [0.2, 0.3, 0.5], (n, k))
    put("ad_size_large", (rng.random((n, k)) < 0.3).astype(np.float64), False)
    put("bid_price_log", rng.standard_normal((n, k)), False)
    put("user_interest_match", rng.beta(2.0, 3.0, (n, k)), False)
    put("creative_age_days_log", np.log1p(rng.exponential(10.0, (n, k))), False)
    put("landing_page_speed", rng.standard_normal((n, k)), False)
    return x.astype(np.float32)


def segments(x: np.ndarray) -> dict[str, np.ndarray]:
    """The segment labels of each row (publisher_category, device_type, country_tier,
    creative_type), as arrays of strings shaped like x[..., 0]."""
    x = np.asarray(x)

    def label(names: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        cols = np.stack([x[..., _COL[n]] for n in names], axis=-1)
        # The last label is the one with no column of its own ("other", "tier3", "image").
        pick = np.where(cols.max(axis=-1) > 0.5, np.argmax(cols, axis=-1), len(names))
        return np.asarray(labels)[pick]

    return {
        "publisher_category": label(
            ["publisher_news", "publisher_sports", "publisher_games"], PUBLISHER_CATEGORIES
        ),
        "device_type": np.asarray(DEVICE_TYPES)[device_index(x)],
        "country_tier": label(["country_tier1", "country_tier2"], COUNTRY_TIERS),
        "creative_type": label(["creative_video", "creative_native"], CREATIVE_TYPES),
    }


def top_choice_ctr(predictions: np.ndarray, truth: np.ndarray) -> float:
    """Mean true CTR of the candidate each request shows: the one the model scores highest.

    Both arrays are [n, k] (requests × candidates).
    """
    best = np.argmax(predictions, axis=1)
    return float(np.mean(truth[np.arange(len(truth)), best]))


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


@functools.cache
def _training_set() -> tuple[np.ndarray, np.ndarray]:
    x = sample_features(np.random.default_rng(SEED), 10_000)
    return x, ground_truth_ctr(x)


@functools.cache
def fitted(variant: str) -> Mlp:
    """The fitted network behind a variant: "champion", "challenger" or "worse" (cached)."""
    x, p = _training_set()
    if variant == "champion":
        return fit_mlp(x, p, exclude=["user_interest_match"], seed=SEED + 1)
    if variant == "challenger":
        return fit_mlp(x, p, seed=SEED + 2, steps=600)
    if variant == "worse":
        cap = np.full(len(FEATURES), np.inf)
        cap[_COL["ad_relevance"]] = WORSE_RELEVANCE_CAP
        mlp = fit_mlp(x, p, exclude=["user_interest_match"], cap=cap, seed=SEED + 3)
        return recalibrate(mlp, x, float(np.mean(p)))
    raise ValueError(f"unknown fitted variant {variant!r}")


# The worse model sees ad_relevance capped here: it cannot tell good ads from the best ones.
WORSE_RELEVANCE_CAP = 0.3


def _segment_regression_mlp() -> Mlp:
    """The challenger plus two hidden units that are live only on `REGRESSED_DEVICE` rows.

    There they swap part of the true ad signal for bid price (which does not move clicks), so
    the model mis-ranks candidates on that device and is unchanged elsewhere. A unit
    relu(u + M·tablet − M) is u on tablet rows and 0 elsewhere while |u| < M; the pair
    relu(u …) − relu(−u …) adds the term u = x·v + c on tablets. c centres u (interest has
    mean 0.4, the rest mean 0) so the tablet predictions keep roughly their level.
    """
    base = fitted("challenger")
    v = np.zeros(len(FEATURES))
    v[_COL["ad_relevance"]] = -0.5
    v[_COL["ad_historical_ctr"]] = -0.3
    v[_COL["user_interest_match"]] = -0.8
    v[_COL["bid_price_log"]] = 0.55
    c = 0.8 * 0.4
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
    """30 → 16 → 1 MLP close to the ground truth; it does not use user_interest_match."""
    return _mlp_model(
        fitted("champion"),
        "ctr-mlp",
        "Champion: MLP 30-16-1 fitted to the ground truth without user_interest_match.",
    )


def challenger_better() -> onnx.ModelProto:
    """Like the champion, but uses user_interest_match: it ranks candidates better."""
    return _mlp_model(
        fitted("challenger"),
        "ctr-mlp",
        "Challenger: MLP 30-16-1 fitted to the ground truth on all features; ranks better.",
    )


def worse() -> onnx.ModelProto:
    """Calibrated (mean prediction = mean true CTR) but ranks worse than the champion.

    Fitted like the champion, but on ad_relevance capped at `WORSE_RELEVANCE_CAP`, so it cannot
    tell good ads from the best ones. Because it approximates the truth given what it sees, it
    stays calibrated on the ads it chooses to show, too.
    """
    return _mlp_model(
        fitted("worse"),
        "ctr-mlp-worse",
        f"Worse: the champion's inputs with ad_relevance capped at {WORSE_RELEVANCE_CAP}.",
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
    """NaN for every row: sqrt(0·Σx − 1)."""
    g = _Graph()
    g.op("Sqrt", [g.op("Sub", [g.zero_row_sum(), g.const("one", 1.0)])], out=OUTPUT_NAME)
    return g.model("ctr-broken-nan", "Broken: predicts NaN for every row.")


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


SLOW_SIZE = 256
SLOW_MATMULS = 48


def slow() -> onnx.ModelProto:
    """The champion's exact predictions plus ~15-20 ms of work per call on one thread (18 ms on
    the 2-core AMD EPYC dev machine; fewer with more intra-op threads).

    A chain of `SLOW_MATMULS` [256, 256] MatMuls starts from a matrix that depends on the input,
    so the optimizer cannot fold it; its sum × 0 is added to the logit. The constant operand is
    an Expand of a scalar, which keeps the file small (onnxruntime folds it at load).
    """
    g = _Graph()
    shape = g.const("slow_shape", [SLOW_SIZE, SLOW_SIZE])
    weight = g.op("Expand", [g.const("slow_scale", 1.0 / SLOW_SIZE), shape])
    seed = g.op("ReduceSum", [g.op("Mul", [INPUT_NAME, g.const("zero", 0.0)])], keepdims=1)
    y = g.op("Expand", [g.op("Add", [seed, g.const("one", 1.0)]), shape])
    for _ in range(SLOW_MATMULS):
        y = g.op("MatMul", [y, weight])
    delay = g.op("Mul", [g.op("ReduceSum", [y], keepdims=1), g.const("slow_zero", 0.0)])
    g.op("Sigmoid", [g.op("Add", [g.mlp_logit(fitted("champion")), delay])], out=OUTPUT_NAME)
    return g.model("ctr-mlp-slow", "Slow: the champion's predictions, ~15-20 ms per call.")


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "champion": champion,
    "challenger_better": challenger_better,
    "broken_constant": broken_constant,
    "broken_nan": broken_nan,
    "broken_raise": broken_raise,
    "slow": slow,
    "miscalibrated": miscalibrated,
    "worse": worse,
    "segment_regression": segment_regression,
}
DEMO_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "champion": champion,
    "challenger": challenger_better,
}


def write_all(outdir: Path | str) -> dict[str, Path]:
    """Write every variant to OUTDIR/<variant>.onnx; returns the paths by variant."""
    return _write(MODELS, Path(outdir))


def write_demo(outdir: Path | str = DEMO_DIR) -> dict[str, Path]:
    """Write the demo pair (champion.onnx, challenger.onnx), by default into router/demo/."""
    return _write(DEMO_MODELS, Path(outdir))


def _write(models: dict[str, Callable[[], onnx.ModelProto]], outdir: Path) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for variant, build in models.items():
        path = outdir / f"{variant}.onnx"
        path.write_bytes(build().SerializeToString())
        paths[variant] = path
    return paths


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _device_of(x: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    if index is None:
        return device_index(x)
    return np.broadcast_to(np.asarray(index, dtype=np.int64), x.shape[:-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modelgen", description=__doc__)
    parser.add_argument("outdir", nargs="?", type=Path, help="write every variant here")
    parser.add_argument("--demo", action="store_true", help="regenerate router/demo/*.onnx")
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
