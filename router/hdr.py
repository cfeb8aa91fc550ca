"""HDR histogram bucket math, bit-for-bit the same as the `hdrhistogram` package.

A latency histogram lives in shared memory as a plain int64 counts array; its
indexing must equal `hdrh.histogram.HdrHistogram(LOWEST, HIGHEST, DIGITS)` so a
summed array can be handed to that class for encoding and `.hgrm` output, while
the evaluator reads percentiles with the one-pass kernel below.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

LOWEST_US = 1
HIGHEST_US = 60_000_000  # 60 s
SIGNIFICANT_DIGITS = 3


def _geometry(lowest: int, highest: int, digits: int) -> tuple[int, int, int, int]:
    unit_magnitude = math.floor(math.log(lowest) / math.log(2))
    largest_single_unit = 2 * 10**digits
    sub_bucket_count_magnitude = math.ceil(math.log(largest_single_unit) / math.log(2))
    half_magnitude = max(sub_bucket_count_magnitude - 1, 0)
    sub_bucket_count = 1 << (half_magnitude + 1)
    smallest_untrackable = sub_bucket_count << unit_magnitude
    bucket_count = 1
    while smallest_untrackable <= highest:
        smallest_untrackable <<= 1
        bucket_count += 1
    counts_len = (bucket_count + 1) * (sub_bucket_count // 2)
    return unit_magnitude, half_magnitude, sub_bucket_count, counts_len


UNIT_MAGNITUDE, HALF_COUNT_MAGNITUDE, SUB_BUCKET_COUNT, COUNTS_LEN = _geometry(
    LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS
)
SUB_BUCKET_HALF_COUNT = SUB_BUCKET_COUNT // 2
SUB_BUCKET_MASK = (SUB_BUCKET_COUNT - 1) << UNIT_MAGNITUDE


@numba.njit(cache=True, inline="always")
def _bucket(value: int) -> int:
    """hdrh's `_get_bucket_index`."""
    v = value | SUB_BUCKET_MASK
    # 64 - clz(v): the bit length of v, found by shifting (no clz intrinsic in numba)
    bits = 0
    while v:
        v >>= 1
        bits += 1
    return bits - UNIT_MAGNITUDE - (HALF_COUNT_MAGNITUDE + 1)


@numba.njit(cache=True, inline="always")
def counts_index(value: int) -> int:
    """Index of `value` in the counts array (hdrh's `_counts_index_for`)."""
    bucket = _bucket(value)
    sub_bucket = value >> (bucket + UNIT_MAGNITUDE)
    return ((bucket + 1) << HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT


@numba.njit(cache=True)
def value_from_index(index: int) -> int:
    bucket = (index >> HALF_COUNT_MAGNITUDE) - 1
    sub_bucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT
    if bucket < 0:
        sub_bucket -= SUB_BUCKET_HALF_COUNT
        bucket = 0
    return sub_bucket << (bucket + UNIT_MAGNITUDE)


@numba.njit(cache=True)
def highest_equivalent_value(value: int) -> int:
    bucket = _bucket(value)
    sub_bucket = value >> (bucket + UNIT_MAGNITUDE)
    lowest = sub_bucket << (bucket + UNIT_MAGNITUDE)
    if sub_bucket >= SUB_BUCKET_COUNT:
        bucket += 1
    return lowest + (1 << (UNIT_MAGNITUDE + bucket)) - 1


@numba.njit(cache=True)
def percentiles(counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Values at the ascending percentiles `wanted` (0..100], read in one pass.

    Same answer as `HdrHistogram.get_value_at_percentile` for each: the highest
    value equivalent to the first index whose running count reaches the target.
    Returns zeros when the histogram is empty.
    """
    out = np.zeros(wanted.size, dtype=np.int64)
    total = counts.sum()
    if total == 0:
        return out
    targets = np.empty(wanted.size, dtype=np.int64)
    for k in range(wanted.size):
        p = min(wanted[k], 100.0)
        targets[k] = max(int(p * total / 100 + 0.5), 1)
    k = 0
    running = 0
    for i in range(counts.size):
        running += counts[i]
        while k < wanted.size and running >= targets[k]:
            out[k] = highest_equivalent_value(value_from_index(i))
            k += 1
        if k == wanted.size:
            break
    return out


def python_counts_index(value: int) -> int:
    """Pure-Python reference of `counts_index` for the tests."""
    bucket = (value | SUB_BUCKET_MASK).bit_length() - UNIT_MAGNITUDE - (HALF_COUNT_MAGNITUDE + 1)
    sub_bucket = value >> (bucket + UNIT_MAGNITUDE)
    return ((bucket + 1) << HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT


def to_hdrhistogram(counts: np.ndarray) -> Any:
    """An `hdrh` HdrHistogram holding `counts` (for encoding, `.hgrm` output, tests)."""
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    nonzero = np.flatnonzero(counts)
    for i in nonzero:
        hist.counts[int(i)] = int(counts[i])
    if nonzero.size:
        # Without this the package's encode() writes an empty histogram.
        hist.set_internal_tacking_values(int(nonzero[0]), int(nonzero[-1]), int(counts.sum()))
    return hist
