"""Where the split is decided: request ID → one of 10,000 buckets.

xxh3-64 of the UTF-8 request ID, seeded, modulo 10,000: deterministic across
processes, restarts and machines (unlike Python's salted `hash()`), and fast
(~0.1 µs). A request goes to the challenger when its bucket is below the split
in basis points, so the challenger's slice only grows as the split grows: an ID
in the 3% slice stays in the 10%, 20%, 40% and 50% slices.
"""

from __future__ import annotations

import xxhash

from router.layout import BASIS_POINTS

_digest = xxhash.xxh3_64_intdigest


def bucket(request_id: str, seed: int = 0) -> int:
    try:
        data = request_id.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): hashed as given
        data = request_id.encode("utf-8", "surrogatepass")
    return _digest(data, seed) % BASIS_POINTS


def is_challenger(request_id: str, split_bp: int, seed: int = 0) -> bool:
    return bucket(request_id, seed) < split_bp
