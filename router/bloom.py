"""The exactly-once filter's blocked Bloom filter: its false-positive math, and the numba
kernel that decides a batch of events against one bucket ring and inserts the new ones,
beside an exact-set reference the tests hold it to. The shared file, its geometry and its
lock are `router.dedupe`'s.

One 512-bit block (one cache line) per key, `PROBES` bits set in it: a key held is never
taken for new; a new key is taken for a held one at the rate `false_positive_rate` gives
for the block's load.
"""

from __future__ import annotations

import math
from enum import IntEnum

import numba
import numpy as np

BLOCK_BITS = 512
BLOCK_WORDS = BLOCK_BITS // 64
BITS_PER_KEY = 16  # 0.08% false duplicates at the sized rate, at a bucket's fullest
PROBES = 10  # the best probe count for 16 bits a key in 512-bit blocks


class Verdict(IntEnum):
    NEW = 0  # counted now
    DUPLICATE = 1  # this key was counted before: accepted, not counted again
    ORPHAN = 2  # a click whose impression this host never counted: rejected, not recorded
    STALE = 3  # the token's epoch has left the ring (expired between verify and check)


def false_positive_rate(keys_per_block: float, probes: int) -> float:
    """A blocked Bloom filter's false-positive rate: block loads are Poisson."""
    total = 0.0
    term = math.exp(-keys_per_block)  # P(load = 0)
    load = 0
    while load < keys_per_block * 4 + 50:
        total += term * (1.0 - (1.0 - 1.0 / BLOCK_BITS) ** (probes * load)) ** probes
        load += 1
        term *= keys_per_block / load
    return total


def set_bits(words: np.ndarray) -> int:
    # numpy >= 2 counts bits in C (~0.3 ms for the default 1 MB bucket); older ones unpack.
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return int(count(words).sum())
    return int(np.unpackbits(words.view(np.uint8)).sum())


def false_duplicate_rate_at(fill: float) -> float:
    """The false-duplicate rate of a bucket with this share of its bits set: the keys per
    block that fill implies (each sets PROBES of 512 bits), through the Poisson model."""
    if fill <= 0.0:
        return 0.0
    if fill >= 1.0:
        return 1.0
    keys_per_block = -BLOCK_BITS * math.log1p(-fill) / PROBES
    return false_positive_rate(keys_per_block, PROBES)


# -- the kernel --------------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S6 = np.uint64(6)
_LOW9 = np.uint64(BLOCK_BITS - 1)
_LOW6 = np.uint64(63)
_ONE = np.uint64(1)
_LOW32 = np.uint64(0xFFFFFFFF)
_PER_WORD = 7  # 9-bit probes in a 64-bit hash
_IMPRESSION = np.uint64(0x1)
_CLICK = np.uint64(0x2)
_NEW, _DUPLICATE, _ORPHAN, _STALE = (int(v) for v in Verdict)


@numba.njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    # splitmix64's finalizer: every input bit flips about half the output bits.
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@numba.njit(cache=True)
def _test_set(block: np.ndarray, key: np.uint64, insert: bool) -> bool:
    """Whether every probe bit of `key` is set in its block; sets them when `insert`."""
    # Each probe is 9 fresh hash bits (7 per 64-bit word), independent of the low half
    # that chose the block. (Double hashing a + j*b modulo 512 made probes of different
    # keys overlap: three times the false duplicates.)
    h = _mix(key ^ _GOLDEN)
    present = True
    for j in range(PROBES):
        if j == _PER_WORD:
            h = _mix(h)
        bit = (h >> np.uint64(9 * (j % _PER_WORD))) & _LOW9
        word = bit >> _S6
        mask = _ONE << (bit & _LOW6)
        if not block[word] & mask:
            present = False
            if not insert:
                return False
            block[word] |= mask
    return present


@numba.njit(cache=True)
def _block_of(bucket: np.ndarray, key: np.uint64) -> np.ndarray:
    n = np.uint64(bucket.shape[0])
    return bucket[((key & _LOW32) * n) >> _S32]


@numba.njit(cache=True)
def check_insert(
    epochs: np.ndarray,
    bits: np.ndarray,
    span_s: int,
    nonce: np.ndarray,
    tag: np.ndarray,
    issued: np.ndarray,
    click: np.ndarray,
    out: np.ndarray,
) -> None:
    """Decide each event of a batch in order (a `Verdict` into `out`) and insert the new.

    `bits` is (buckets, blocks, 8) uint64; an event's key is its token's (nonce, tag =
    host << 32 | candidate) and its type. The caller holds the file's lock."""
    n_buckets = epochs.shape[0]
    for i in range(nonce.shape[0]):
        epoch = issued[i] // span_s
        s = epoch % n_buckets
        if epochs[s] != epoch:
            if epochs[s] > epoch:
                out[i] = _STALE
                continue
            bits[s] = 0  # everything it held has expired
            epochs[s] = epoch
        base = _mix(nonce[i] ^ _mix(tag[i] ^ _GOLDEN))
        seen = _mix(base ^ _IMPRESSION)
        if click[i]:
            if not _test_set(_block_of(bits[s], seen), seen, False):
                out[i] = _ORPHAN
                continue
            key = _mix(base ^ _CLICK)
        else:
            key = seen
        out[i] = _DUPLICATE if _test_set(_block_of(bits[s], key), key, True) else _NEW


def check_insert_reference(
    epochs: np.ndarray,
    seen: dict[int, set[tuple[int, int, int]]],
    span_s: int,
    nonce: np.ndarray,
    tag: np.ndarray,
    issued: np.ndarray,
    click: np.ndarray,
    out: np.ndarray,
) -> None:
    """`check_insert` with exact sets in place of the Bloom filter (`seen`: one set of
    (nonce, tag, type) per bucket): what the kernel answers, but for false duplicates."""
    n_buckets = epochs.shape[0]
    for i in range(nonce.shape[0]):
        epoch = int(issued[i]) // span_s
        s = epoch % n_buckets
        if epochs[s] != epoch:
            if epochs[s] > epoch:
                out[i] = _STALE
                continue
            seen[s] = set()
            epochs[s] = epoch
        held = seen.setdefault(s, set())
        key = (int(nonce[i]), int(tag[i]), int(click[i]))
        if click[i] and (key[0], key[1], 0) not in held:
            out[i] = _ORPHAN
        elif key in held:
            out[i] = _DUPLICATE
        else:
            held.add(key)
            out[i] = _NEW


# -- the file ----------------------------------------------------------------------------
