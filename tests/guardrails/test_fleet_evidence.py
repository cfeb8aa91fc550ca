from __future__ import annotations

import msgpack
import numpy as np
import pytest

from guardrails import fleet_evidence as fe
from router import layout

CELLS, BUCKETS = 12, 10


def _host(seed: int, models: tuple[int, int] = (1, 2)) -> fe.HostEvidence:
    rng = np.random.default_rng(seed)
    slots = []
    for _ in (0, 1):
        t = fe.empty_totals(CELLS, BUCKETS)
        for name in fe._FIELDS:
            a = getattr(t, name)
            mask = rng.random(a.shape) < 0.3  # sparse, as real slots are
            if a.dtype.kind == "f":
                a[mask] = rng.random(int(mask.sum())) * 1e3
            else:
                a[mask] = rng.integers(-5, 10**12, int(mask.sum()))
        slots.append(t)
    rejects = rng.integers(0, 100, len(layout.REJECT_REASONS))
    return fe.HostEvidence(models, (slots[0], slots[1]), rejects)


def _equal(a: fe.SlotTotals, b: fe.SlotTotals) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fe._FIELDS)


def test_evidence_round_trips_every_field() -> None:
    host = _host(1)
    back = fe.Merger(CELLS, BUCKETS).decode(fe.encode(host, CELLS, BUCKETS))
    assert back.slot_model == (1, 2)
    assert _equal(back.slots[0], host.slots[0]) and _equal(back.slots[1], host.slots[1])
    assert np.array_equal(back.rejects, host.rejects)


def test_evidence_merge_is_the_sum_over_hosts_counting_the_same_models() -> None:
    hosts = [_host(1), _host(2), _host(3, models=(1, 7))]  # host 3 still on model 7
    blobs = [fe.encode(h, CELLS, BUCKETS) for h in hosts]
    (champion, challenger), rejects, bad = fe.Merger(CELLS, BUCKETS).merge(blobs, (1, 2))
    assert bad == {}
    assert _equal(champion, hosts[0].slots[0] + hosts[1].slots[0] + hosts[2].slots[0])
    assert _equal(challenger, hosts[0].slots[1] + hosts[1].slots[1])
    assert np.array_equal(rejects, sum(h.rejects for h in hosts))


def test_evidence_encoding_is_narrow_where_counts_are_small() -> None:
    small = fe.empty_totals(CELLS, BUCKETS)
    small.seg_events[:, 0] = 7
    big = fe.empty_totals(CELLS, BUCKETS)
    big.seg_events[:, 0] = 7 * 10**12
    sizes = [
        len(fe.encode(fe.HostEvidence((1, 2), (t, t), np.zeros(1, np.int64)), CELLS, BUCKETS))
        for t in (small, big)
    ]
    assert sizes[0] < sizes[1] / 2


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(5)])
def test_scatter_add_kernel_matches_its_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(1000, 200, replace=False))
    gaps = np.diff(positions, prepend=0).astype(np.uint32)
    values = rng.integers(-(10**9), 10**9, 200)
    start = rng.integers(0, 10, 1000)
    kernel, reference = start.copy(), start.copy()
    fe.scatter_add(kernel, gaps, values)
    fe.scatter_add_reference(reference, gaps, values)
    assert np.array_equal(kernel, reference)


def _body(blob: bytes) -> list:  # type: ignore[type-arg]
    return list(msgpack.unpackb(blob, raw=False))


def _corrupt(kind: str) -> bytes:
    blob = fe.encode(_host(5), CELLS, BUCKETS)
    body = _body(blob)
    if kind == "garbage":
        return b"\xc1not msgpack"
    if kind == "format":
        body[0] = fe.FORMAT + 1
    elif kind == "cells":
        body[1] = CELLS + 1
    elif kind == "past_end":
        gap_kind, gaps, value_kind, values = body[4][1][0]
        g = np.frombuffer(gaps, dtype=np.dtype(gap_kind)).copy()
        g[-1] = np.iinfo(g.dtype).max  # far past the end of the vector
        body[4][1][0] = [gap_kind, g.tobytes(), value_kind, values]
    elif kind == "lengths":
        body[4][0][0][3] = body[4][0][0][3][:-8]
    elif kind == "float_into_ints":
        body[4][0][0] = body[4][0][1]
    return bytes(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, id=k)
        for k in ("garbage", "format", "cells", "past_end", "lengths", "float_into_ints")
    ],
)
def test_evidence_bad_blob_adds_nothing_and_is_named(kind: str) -> None:
    good = _host(1)
    blobs = [fe.encode(good, CELLS, BUCKETS), _corrupt(kind)]
    (champion, challenger), rejects, bad = fe.Merger(CELLS, BUCKETS).merge(blobs, (1, 2))
    assert list(bad) == [1]
    assert _equal(champion, good.slots[0]) and _equal(challenger, good.slots[1])
    assert np.array_equal(rejects, good.rejects)


def test_evidence_for_another_segment_space_is_refused_with_both_sizes() -> None:
    blob = fe.encode(_host(1), CELLS, BUCKETS)
    with pytest.raises(fe.EvidenceError, match=f"{CELLS} segment cells.*has {CELLS + 4}"):
        fe.Merger(CELLS + 4, BUCKETS).decode(blob)
