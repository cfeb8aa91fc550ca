"""The exactly-once filter: the kernel against its exact reference, bucket reuse, the
memory bound, and check-and-insert from several real processes over the real file."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.disk import MiB, namespaces, small_fs

from router.bloom import Verdict, check_insert, check_insert_reference
from router.dedupe import N_BUCKETS, Dedupe, FilterBusy, Geometry

NOW = 1_700_000_000
needs_mount = pytest.mark.skipif(
    namespaces() is None, reason="cannot mount a tmpfs in a private mount namespace here"
)


def _batch(
    keys: list[tuple[int, int, int, int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(nonce, tag, issued, click) arrays of (nonce, candidate, issued, click) keys."""
    nonce = np.array([k[0] for k in keys], np.uint64)
    tag = np.array([(7 << 32) | k[1] for k in keys], np.uint64)
    issued = np.array([k[2] for k in keys], np.int64)
    click = np.array([k[3] for k in keys], np.int64)
    return nonce, tag, issued, click


def _small(tmp_path: Path, events_per_s: int = 10) -> Dedupe:
    return Dedupe(tmp_path, Geometry(ttl_s=60, skew_s=5, events_per_s=events_per_s))


def test_dedupe_repeated_event_is_a_duplicate_and_click_needs_its_impression(
    tmp_path: Path,
) -> None:
    d = _small(tmp_path)
    events = [
        (1, 0, NOW, 1),  # a click before its impression: refused, not remembered
        (1, 0, NOW, 0),
        (1, 0, NOW, 0),
        (1, 0, NOW, 1),  # now its impression is there
        (1, 0, NOW, 1),
        (1, 1, NOW, 0),  # another candidate of the same answer
        (2, 0, NOW, 0),  # another answer
    ]
    got = [Verdict(v) for v in d.check(*_batch(events))]
    assert got == [
        Verdict.ORPHAN,
        Verdict.NEW,
        Verdict.DUPLICATE,
        Verdict.NEW,
        Verdict.DUPLICATE,
        Verdict.NEW,
        Verdict.NEW,
    ]
    # Another mapping of the same file (another worker) sees the same keys.
    other = _small(tmp_path)
    assert [Verdict(v) for v in other.check(*_batch(events[1:2]))] == [Verdict.DUPLICATE]


def test_dedupe_bucket_is_reused_only_after_its_tokens_expired(tmp_path: Path) -> None:
    d = _small(tmp_path)
    span = d.geometry.span_s
    # The ring minus one bucket covers the TTL, the skew and the workers' clock slack.
    assert (N_BUCKETS - 1) * span > 60 + 5 + 2
    old = (1, 0, NOW, 0)
    assert d.check(*_batch([old]))[0] == Verdict.NEW
    later = NOW + N_BUCKETS * span  # same bucket, a later epoch: the old keys are gone
    assert d.check(*_batch([(1, 0, later, 0)]))[0] == Verdict.NEW
    # A token of the older epoch arriving after the reuse is stale, never "new".
    assert d.check(*_batch([old]))[0] == Verdict.STALE


def test_dedupe_memory_is_bounded_whatever_the_traffic(tmp_path: Path) -> None:
    d = _small(tmp_path)
    size = (tmp_path / "events.dedupe").stat().st_size
    assert size == d.geometry.file_bytes
    per_bucket = 10 * d.geometry.span_s
    rng = np.random.default_rng(3)
    # Twenty times what the filter is sized for, in one epoch.
    nonces = rng.integers(0, 2**63, per_bucket * 20, dtype=np.uint64)
    keys = [(int(n), 0, NOW, 0) for n in nonces]
    first = d.check(*_batch(keys))
    assert (tmp_path / "events.dedupe").stat().st_size == size
    assert (first == Verdict.DUPLICATE).mean() > 0.1  # overloaded: many false duplicates
    # ... but a true duplicate is never "new", however full the filter.
    again = d.check(*_batch(keys))
    assert (again == Verdict.DUPLICATE).all()


def test_dedupe_false_duplicate_rate_at_the_sized_rate_is_as_stated(tmp_path: Path) -> None:
    g = Geometry(ttl_s=3600, skew_s=60, events_per_s=200)
    d = Dedupe(tmp_path, g)
    n = 200 * g.span_s  # one bucket filled at the sized rate: its fullest moment
    filling = d.check(*_batch([(i, 0, NOW, 0) for i in range(n)]))
    bucket = (NOW // g.span_s) % N_BUCKETS
    full = d.bits[bucket].copy()
    false = 0
    for r in range(50):  # probes of new keys, each set against the full bucket
        probe = d.check(*_batch([(10**9 + r * 1000 + i, 0, NOW, 0) for i in range(1000)]))
        false += int((probe == Verdict.DUPLICATE).sum())
        d.bits[bucket] = full
    stated = g.false_duplicate_rate(200)
    assert 0.0005 < stated < 0.001
    assert false / 50_000 < 2 * stated, (false, stated)
    assert (filling == Verdict.DUPLICATE).mean() < stated  # lower while the bucket fills
    # /metrics reads the rate back from the bucket's fill.
    fill, estimate = d.load(NOW)
    assert 0.4 < fill < 0.5 and estimate == pytest.approx(stated, rel=0.2)
    assert d.load(NOW + N_BUCKETS * g.span_s) == (0.0, 0.0)  # a bucket not yet begun


def test_dedupe_other_geometry_replaces_the_file(tmp_path: Path) -> None:
    d = _small(tmp_path)
    assert d.check(*_batch([(1, 0, NOW, 0)]))[0] == Verdict.NEW
    d.close()
    same = _small(tmp_path)
    assert same.check(*_batch([(1, 0, NOW, 0)]))[0] == Verdict.DUPLICATE
    same.close()
    bigger = _small(tmp_path, events_per_s=1000)
    assert (tmp_path / "events.dedupe").stat().st_size == bigger.geometry.file_bytes
    assert bigger.check(*_batch([(1, 0, NOW, 0)]))[0] == Verdict.NEW


event = st.tuples(
    st.integers(0, 30),  # nonce: few values, so repeats are common
    st.integers(0, 2),  # candidate
    st.integers(NOW - 40, NOW + 40),  # issued
    st.integers(0, 1),  # click
)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(event, min_size=1, max_size=30), min_size=1, max_size=8))
def test_dedupe_kernel_never_answers_new_for_a_key_it_holds(
    batches: list[list[tuple[int, int, int, int]]],
) -> None:
    span = Geometry(ttl_s=10, skew_s=1, events_per_s=50).span_s
    n_blocks = 4  # tiny: collisions between keys are common
    epochs = np.zeros(N_BUCKETS, np.int64)
    bits = np.zeros((N_BUCKETS, n_blocks, 8), np.uint64)
    ref_epochs = np.zeros(N_BUCKETS, np.int64)
    held: dict[int, set[tuple[int, int, int]]] = {}
    for keys in batches:
        arrays = _batch(keys)
        got = np.empty(len(keys), np.int64)
        want = np.empty(len(keys), np.int64)
        check_insert(epochs, bits, span, *arrays, got)
        check_insert_reference(ref_epochs, held, span, *arrays, want)
        for g, w in zip(got.tolist(), want.tolist(), strict=True):
            # The only disagreement allowed: a false duplicate (a new key taken for seen,
            # and so a click whose impression looked seen).
            assert g == w or (g == Verdict.DUPLICATE and w in (Verdict.NEW, Verdict.ORPHAN))
            if g != w and w == Verdict.ORPHAN:
                raise AssertionError("a click counted although its impression was never seen")


def _worker(path: str, keys: list[tuple[int, int, int, int]], start: object, out: object) -> None:
    d = Dedupe(Path(path), Geometry(ttl_s=60, skew_s=5, events_per_s=100_000))
    d.warm()  # as a worker does at start
    new = 0
    for i in range(0, len(keys), ROUND):
        start.wait(60)  # type: ignore[attr-defined]  # every process on the same keys at once
        while True:
            try:
                verdicts = d.check(*_batch(keys[i : i + ROUND]))
                break
            except FilterBusy:  # a holder descheduled past the wait: nothing decided, again
                continue
        new += int((verdicts == Verdict.NEW).sum())
    out.put(new)  # type: ignore[attr-defined]


ROUND = 5_000


@pytest.mark.parametrize("processes", [2, 3])
def test_dedupe_concurrent_processes_never_count_a_key_twice(
    tmp_path: Path, processes: int
) -> None:
    # Every process posts the same impressions at the same moment (a retry storm over
    # every worker); the filter is sized far above that, so each key is counted once in all.
    Dedupe(tmp_path, Geometry(ttl_s=60, skew_s=5, events_per_s=100_000)).close()
    keys = [(i, 0, NOW, 0) for i in range(8 * ROUND)]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), keys, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        counts = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0] * processes
    assert sum(counts) == len(keys), counts


@needs_mount
def test_dedupe_serve_refuses_to_start_when_the_filter_does_not_fit(tmp_path: Path) -> None:
    # 8 MiB: room for the state file (5.3 MiB), not for the default filter (15 MiB).
    mount = tmp_path / "disk"
    cmd = [sys.executable, "-m", "rampart.cli", "serve", "--state-dir", str(mount / "state")]
    out = subprocess.run(
        [*small_fs(mount, 8 * MiB), *cmd, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(
        f"rampart: no room for the exactly-once event filter in {mount / 'state'} (15.0 MiB"
    )
    assert lines[0].endswith("No space left on device")
