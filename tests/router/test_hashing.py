from __future__ import annotations

import subprocess
import sys

import numpy as np
import xxhash
from scipy import stats

from router import hashing
from router.layout import BASIS_POINTS


def test_bucket_deterministic_across_processes() -> None:
    ids = [f"req-{i}" for i in range(50)]
    here = [hashing.bucket(i, seed=7) for i in ids]
    code = f"from router import hashing;print([hashing.bucket(i, seed=7) for i in {ids!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert eval(out.stdout) == here


def test_bucket_uniform_chi_square_over_a_million_ids() -> None:
    digest = xxhash.xxh3_64_intdigest
    buckets = np.fromiter(
        (digest(f"ad-request-{i}".encode(), 0) % BASIS_POINTS for i in range(1_000_000)),
        dtype=np.int64,
        count=1_000_000,
    )
    counts = np.bincount(buckets, minlength=BASIS_POINTS)
    assert counts.sum() == 1_000_000
    _, p = stats.chisquare(counts)
    assert p > 0.001, f"bucket counts are not uniform (chi-square p = {p:.2g})"


def test_is_challenger_monotone_as_split_grows() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    previous: set[str] = set()
    for split in (300, 1000, 2000, 4000, 5000):
        chosen = {i for i in ids if hashing.is_challenger(i, split)}
        assert previous <= chosen
        assert abs(len(chosen) / len(ids) - split / BASIS_POINTS) < 0.015
        previous = chosen


def test_bucket_seed_changes_assignment() -> None:
    ids = [f"u{i}" for i in range(1000)]
    same = sum(hashing.bucket(i, 1) == hashing.bucket(i, 2) for i in ids)
    assert same < 10
