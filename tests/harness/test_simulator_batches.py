"""The simulator's /predict bodies (harness/simulator_batches.py): the segment mix and the
model's feature order."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from harness import ground_truth
from harness.simulator_batches import make_batch
from harness.simulator_config import SimConfig


def _decoded(config: SimConfig, features: list[str], n: int) -> list[dict[str, Any]]:
    batch = make_batch(config, np.random.default_rng(config.seed), features, 0, n)
    return [msgpack.unpackb(body) for body in batch.bodies]


def test_make_batch_honours_the_segment_mix() -> None:
    mix = {"device_type": {"tablet": 1.0}, "publisher_category": {"news": 1, "games": 1}}
    config = SimConfig("http://127.0.0.1:8000", rate=10, duration_s=1, mix=mix)
    bodies = _decoded(config, ground_truth.FEATURES, 2000)
    assert {b["segment"]["device_type"] for b in bodies} == {"tablet"}
    tablet = ground_truth.FEATURES.index("device_tablet")
    assert all(row[tablet] == 1.0 for b in bodies for row in b["features"])
    news = np.mean([b["segment"]["publisher_category"] == "news" for b in bodies])
    assert 0.45 < news < 0.55
    assert {b["segment"]["publisher_category"] for b in bodies} == {"news", "games"}
    assert {b["segment"]["country_tier"] for b in bodies} == set(ground_truth.COUNTRY_TIERS)


def test_make_batch_orders_rows_like_the_model() -> None:
    features = ["device_tablet", "ad_relevance", "user_age_bucket"]
    config = SimConfig("http://127.0.0.1:8000", rate=10, duration_s=1, candidates=3)
    positional = _decoded(config, features, 5)
    x = ground_truth.sample_requests(np.random.default_rng(config.seed), 5, 3)
    np.testing.assert_array_equal(
        np.array([b["features"] for b in positional], dtype=np.float32),
        x[:, :, ground_truth.feature_columns(features)],
    )
    assert len({b["request_id"] for b in positional}) == 5
    config.positional = False
    named = _decoded(config, features, 5)
    assert named[0]["features"][1] == dict(zip(features, positional[0]["features"][1], strict=True))
