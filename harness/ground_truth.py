"""The synthetic ad traffic the harness sends, and each ad's true click probability (NumPy only).

`FEATURES` names 30 ad-serving features. `sample_requests` draws requests of several candidate
ads from a seeded generator, with a segment mix that can be overridden (`DEFAULT_MIX`,
`resolve_mix`, `parse_mix`); `segments` labels rows with the four segment dimensions the
router splits by; `ground_truth_ctr` is the true click probability of a row.

This module must not import onnx: the simulator, `rampart demo` and the scenarios run on a
base install. `bench.modelgen` (a test-only tool) fits and builds the models from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

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
COLUMN: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}

DEVICE_TYPES = ("mobile", "desktop", "tablet")
COUNTRY_TIERS = ("tier1", "tier2", "tier3")
PUBLISHER_CATEGORIES = ("news", "sports", "games", "other")
CREATIVE_TYPES = ("video", "native", "image")
LABELS: dict[str, tuple[str, ...]] = {
    "publisher_category": PUBLISHER_CATEGORIES,
    "device_type": DEVICE_TYPES,
    "country_tier": COUNTRY_TIERS,
    "creative_type": CREATIVE_TYPES,
}

# The share of each segment value in sampled traffic, in `LABELS` order. Device, country and
# publisher are drawn once per request, creative once per candidate.
DEFAULT_MIX: dict[str, tuple[float, ...]] = {
    "publisher_category": (0.3, 0.2, 0.15, 0.35),
    "device_type": (0.55, 0.30, 0.15),
    "country_tier": (0.5, 0.3, 0.2),
    "creative_type": (0.2, 0.3, 0.5),
}
Mix = Mapping[str, Mapping[str, float]]

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
    cols = [COLUMN["device_mobile"], COLUMN["device_desktop"], COLUMN["device_tablet"]]
    return np.asarray(np.argmax(np.asarray(x)[..., cols], axis=-1), dtype=np.int64)


def ground_truth_logit(x: np.ndarray, device_index: np.ndarray | None = None) -> np.ndarray:
    """The true click log-odds of rows `x` (shape [..., F]); see `ground_truth_ctr`."""
    x = np.asarray(x, dtype=np.float64)
    dev = _device_of(x, device_index)

    def c(name: str) -> np.ndarray:
        return x[..., COLUMN[name]]

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
    return sigmoid(ground_truth_logit(x, device_index))


def resolve_mix(mix: Mix | None = None) -> dict[str, tuple[float, ...]]:
    """Segment proportions per dimension, in `LABELS` order: `DEFAULT_MIX` overridden by `mix`.

    An overridden dimension takes only the values it names, weighted as given and normalised
    (``{"device_type": {"tablet": 1}}`` is all tablets); the other dimensions keep the default.
    """
    out = dict(DEFAULT_MIX)
    for dim, weights in (mix or {}).items():
        if dim not in LABELS:
            raise ValueError(
                f"unknown segment dimension {dim!r}; the dimensions are {list(LABELS)}"
            )
        unknown = set(weights) - set(LABELS[dim])
        if unknown:
            raise ValueError(
                f"unknown {dim} value(s) {sorted(unknown)}; the values are {list(LABELS[dim])}"
            )
        p = [float(weights.get(label, 0.0)) for label in LABELS[dim]]
        if not all(math.isfinite(v) and v >= 0 for v in p) or sum(p) <= 0:
            raise ValueError(
                f"{dim} weights must be finite, >= 0 and not all 0, got {dict(weights)}"
            )
        out[dim] = tuple(v / sum(p) for v in p)
    return out


def parse_mix(text: str) -> dict[str, dict[str, float]]:
    """``"device_type=mobile:0.2,tablet:0.8;country_tier=tier1:1"`` → a `Mix` (validated)."""
    mix: dict[str, dict[str, float]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        dim, sep, values = part.partition("=")
        if not sep or not values:
            raise ValueError(f"mix {part!r}: expected DIMENSION=VALUE:WEIGHT,VALUE:WEIGHT,...")
        weights: dict[str, float] = {}
        for item in values.split(","):
            label, sep, weight = item.strip().partition(":")
            try:
                weights[label] = float(weight)
            except ValueError:
                raise ValueError(f"mix {part!r}: {item!r} is not VALUE:WEIGHT") from None
        mix[dim.strip()] = weights
    resolve_mix(mix)
    return mix


def sample_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` independent rows (float32, shape [n, F]), each with its own context."""
    return sample_requests(rng, n, 1)[:, 0, :]


def sample_requests(rng: np.random.Generator, n: int, k: int, mix: Mix | None = None) -> np.ndarray:
    """`n` requests of `k` candidate ads each (float32, shape [n, k, F]).

    The candidates of one request share its context features (user, time, device, geo,
    publisher, slot) and differ in their ad features, as when the ad server ranks several ads
    for one slot. `mix` overrides segment proportions (see `resolve_mix`); without it the
    draws are exactly those the models were fitted on.
    """
    p = resolve_mix(mix)
    x = np.zeros((n, k, len(FEATURES)), dtype=np.float64)

    def put(name: str, values: np.ndarray, shared: bool) -> None:
        x[..., COLUMN[name]] = values[:, None] if shared else values

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
    device = rng.choice(3, size=n, p=p["device_type"])
    for i, name in enumerate(("device_mobile", "device_desktop", "device_tablet")):
        put(name, (device == i).astype(np.float64), True)
    ios = rng.random(n) < 0.45
    put("os_ios", ((device != 1) & ios).astype(np.float64), True)
    put("os_android", ((device != 1) & ~ios).astype(np.float64), True)
    one_hot(["country_tier1", "country_tier2", None], p["country_tier"], (n,))
    put("publisher_quality", rng.beta(4.0, 2.0, n), True)
    one_hot(
        ["publisher_news", "publisher_sports", "publisher_games", None],
        p["publisher_category"],
        (n,),
    )
    put("slot_above_fold", (rng.random(n) < 0.45).astype(np.float64), True)
    # Ads, one draw per candidate.
    relevance = rng.standard_normal((n, k))
    put("ad_relevance", relevance, False)
    put("ad_historical_ctr", 0.3 * relevance + 0.954 * rng.standard_normal((n, k)), False)
    put("advertiser_quality", rng.beta(3.0, 2.0, (n, k)), False)
    one_hot(["creative_video", "creative_native", None], p["creative_type"], (n, k))
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
        cols = np.stack([x[..., COLUMN[n]] for n in names], axis=-1)
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


def feature_columns(names: Sequence[str]) -> np.ndarray:
    """Column of each named feature in `FEATURES`: rows[..., cols] are in a model's order."""
    unknown = [name for name in names if name not in COLUMN]
    if unknown:
        raise ValueError(f"feature(s) {unknown} are not in the synthetic world's FEATURES")
    return np.array([COLUMN[name] for name in names], dtype=np.int64)


def top_choice_ctr(predictions: np.ndarray, truth: np.ndarray) -> float:
    """Mean true CTR of the candidate each request shows: the one the model scores highest.

    Both arrays are [n, k] (requests × candidates).
    """
    best = np.argmax(predictions, axis=1)
    return float(np.mean(truth[np.arange(len(truth)), best]))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _device_of(x: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    if index is None:
        return device_index(x)
    return np.broadcast_to(np.asarray(index, dtype=np.int64), x.shape[:-1])
