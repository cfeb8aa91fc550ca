from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from router import hdr


def _reference() -> HdrHistogram:
    return HdrHistogram(hdr.LOWEST_US, hdr.HIGHEST_US, hdr.SIGNIFICANT_DIGITS)


def test_counts_index_matches_hdrhistogram_package() -> None:
    ref = _reference()
    assert ref.counts_len == hdr.COUNTS_LEN
    values = [0, 1, 2, 1023, 1024, 2047, 2048, 4095, 4096, 123_456, 59_999_999, 60_000_000]
    values += list(np.random.default_rng(3).integers(0, hdr.HIGHEST_US, 5000))
    for v in values:
        expected = ref._counts_index_for(int(v))
        assert hdr.counts_index(int(v)) == expected
        assert hdr.python_counts_index(int(v)) == expected


@pytest.mark.parametrize(
    "sigma", [pytest.param(0.5, id="narrow"), pytest.param(2.5, id="heavy-tail")]
)
def test_percentiles_match_record_value(sigma: float) -> None:
    rng = np.random.default_rng(11)
    values = np.minimum(rng.lognormal(6, sigma, 50_000).astype(np.int64), hdr.HIGHEST_US)
    ref = _reference()
    counts = np.zeros(hdr.COUNTS_LEN, dtype=np.int64)
    for v in values:
        ref.record_value(int(v))
        counts[hdr.counts_index(int(v))] += 1
    wanted = np.array([50.0, 90.0, 99.0, 99.9, 99.99, 100.0])
    ours = hdr.percentiles(counts, wanted)
    assert list(ours) == [ref.get_value_at_percentile(p) for p in wanted]
    decoded = hdr.to_hdrhistogram(counts)
    assert decoded.get_total_count() == len(values)
    assert decoded.get_value_at_percentile(99.0) == ref.get_value_at_percentile(99.0)
    assert HdrHistogram.decode(decoded.encode()).get_total_count() == len(values)


def test_percentiles_empty_histogram_is_zero() -> None:
    counts = np.zeros(hdr.COUNTS_LEN, dtype=np.int64)
    assert list(hdr.percentiles(counts, np.array([50.0, 99.0]))) == [0, 0]
