from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness import ground_truth
from harness.ground_truth import FEATURES

TABLET = ground_truth.DEVICE_TYPES.index("tablet")


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    x = ground_truth.sample_features(np.random.default_rng(1), 20_000)
    return x, ground_truth.ground_truth_ctr(x)


def test_ground_truth_imports_without_onnx() -> None:
    code = "import sys, harness.ground_truth; assert 'onnx' not in sys.modules, 'onnx imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_sample_features_is_deterministic_float32_rows() -> None:
    a = ground_truth.sample_features(np.random.default_rng(5), 100)
    b = ground_truth.sample_features(np.random.default_rng(5), 100)
    assert a.dtype == np.float32
    assert a.shape == (100, len(FEATURES)) == (100, 30)
    assert np.array_equal(a, b)
    assert len(set(FEATURES)) == len(FEATURES)


def test_ground_truth_ctr_averages_about_two_percent(rows: tuple[np.ndarray, np.ndarray]) -> None:
    _, truth = rows
    assert 0.015 < truth.mean() < 0.025
    assert np.all((truth > 0) & (truth < 1))


def test_ground_truth_ctr_device_index_overrides_one_hot_columns() -> None:
    x = ground_truth.sample_features(np.random.default_rng(6), 1000)
    derived = ground_truth.device_index(x)
    assert np.array_equal(
        ground_truth.ground_truth_ctr(x, derived), ground_truth.ground_truth_ctr(x)
    )
    as_tablet = ground_truth.ground_truth_ctr(x, np.full(len(x), TABLET))
    assert not np.allclose(
        as_tablet[derived != TABLET], ground_truth.ground_truth_ctr(x)[derived != TABLET]
    )


def test_sample_requests_share_context_between_candidates() -> None:
    x = ground_truth.sample_requests(np.random.default_rng(7), 50, 4)
    context = [FEATURES.index(n) for n in ground_truth.CONTEXT_FEATURES]
    ads = [FEATURES.index(n) for n in ground_truth.AD_FEATURES]
    assert np.array_equal(x[:, :, context], np.repeat(x[:, :1, context], 4, axis=1))
    assert not np.array_equal(x[:, 0, ads], x[:, 1, ads])


def test_segments_label_every_row() -> None:
    x = ground_truth.sample_features(np.random.default_rng(8), 2000)
    seg = ground_truth.segments(x)
    for key, labels in ground_truth.LABELS.items():
        assert set(seg[key]) == set(labels), key
    tablet = x[:, FEATURES.index("device_tablet")] == 1
    assert np.all((seg["device_type"] == "tablet") == tablet)


def test_sample_requests_default_mix_matches_default_proportions() -> None:
    x = ground_truth.sample_requests(np.random.default_rng(9), 20_000, 2)
    seg = ground_truth.segments(x)
    for dim, shares in ground_truth.DEFAULT_MIX.items():
        labels = seg[dim][:, 0]
        seen = [np.mean(labels == label) for label in ground_truth.LABELS[dim]]
        np.testing.assert_allclose(seen, shares, atol=0.015, err_msg=dim)


def test_sample_requests_mix_overrides_named_dimensions_only() -> None:
    mix = {
        "device_type": {"mobile": 0.2, "desktop": 0.3, "tablet": 0.5},
        "creative_type": {"video": 1},
    }
    x = ground_truth.sample_requests(np.random.default_rng(10), 20_000, 3, mix=mix)
    seg = ground_truth.segments(x)
    device = seg["device_type"][:, 0]
    seen = [np.mean(device == d) for d in ground_truth.DEVICE_TYPES]
    np.testing.assert_allclose(seen, [0.2, 0.3, 0.5], atol=0.015)
    assert np.all(seg["creative_type"] == "video")
    country = seg["country_tier"][:, 0]
    np.testing.assert_allclose(
        [np.mean(country == t) for t in ground_truth.COUNTRY_TIERS],
        ground_truth.DEFAULT_MIX["country_tier"],
        atol=0.015,
    )


def test_sample_requests_without_mix_keeps_the_fitted_draws() -> None:
    # The models were fitted on these exact draws; an explicit default mix must not move them.
    default = {
        dim: dict(zip(ground_truth.LABELS[dim], p, strict=True))
        for dim, p in ground_truth.DEFAULT_MIX.items()
    }
    a = ground_truth.sample_requests(np.random.default_rng(11), 500, 2)
    b = ground_truth.sample_requests(np.random.default_rng(11), 500, 2, mix={})
    c = ground_truth.sample_requests(np.random.default_rng(11), 500, 2, mix=default)
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)


def test_parse_mix_reads_dimensions_and_weights() -> None:
    assert ground_truth.parse_mix(
        "device_type=mobile:0.2,desktop:0.3,tablet:0.5;country_tier=tier1:1"
    ) == {
        "device_type": {"mobile": 0.2, "desktop": 0.3, "tablet": 0.5},
        "country_tier": {"tier1": 1.0},
    }
    assert ground_truth.resolve_mix({"device_type": {"tablet": 2, "mobile": 2}})["device_type"] == (
        0.5,
        0.0,
        0.5,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("browser=chrome:1", "unknown segment dimension", id="unknown-dimension"),
        pytest.param("device_type=phone:1", "unknown device_type value", id="unknown-value"),
        pytest.param("device_type=mobile:-1", "must be finite", id="negative-weight"),
        pytest.param("device_type=mobile:0", "not all 0", id="all-zero"),
        pytest.param("device_type=mobile", "is not VALUE:WEIGHT", id="no-weight"),
        pytest.param("device_type", "expected DIMENSION=", id="no-values"),
    ],
)
def test_parse_mix_refuses_bad_mix(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ground_truth.parse_mix(text)


def test_feature_columns_reorder_rows_and_refuse_unknown_names() -> None:
    x = ground_truth.sample_features(np.random.default_rng(12), 5)
    cols = ground_truth.feature_columns(["ad_relevance", "device_tablet"])
    assert np.array_equal(x[:, cols], x[:, [FEATURES.index("ad_relevance"), 10]])
    with pytest.raises(ValueError, match=r"\['feat0'\]"):
        ground_truth.feature_columns(["ad_relevance", "feat0"])


def test_top_choice_ctr_takes_the_top_scored_candidate() -> None:
    predictions = np.array([[0.1, 0.3], [0.5, 0.2]])
    truth = np.array([[0.0, 1.0], [0.5, 0.0]])
    assert ground_truth.top_choice_ctr(predictions, truth) == 0.75
