"""A host's evidence on the wire: what each sidecar publishes to the fleet store each tick.

One blob per host and tick, cumulative for the rollout (so a retried or repeated
publish carries nothing new and the store keeps only the newest), holding for each
slot the model version it counts and its `SlotTotals`, plus the host's reject
counts. The champion's counts are since the host first saw the rollout (its own
baseline), the challenger's since its slot was loaded.

Most of a slot's 170 KB are zeros (the latency histogram alone is 17,408 counts),
so each array is sent as its non-zero positions and values, and the whole blob is
deflated: a busy host at the default segment space publishes well under 64 KiB.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgpack
import numpy as np

from router import layout
from router.snapshot import SlotTotals

FORMAT = 1
_FIELDS = tuple(SlotTotals.__dataclass_fields__)


class EvidenceError(ValueError):
    """A blob this host cannot read (another format, or another segment space)."""


@dataclass(frozen=True)
class HostEvidence:
    slot_model: tuple[int, int]  # model version each slot counts (0: none)
    slots: tuple[SlotTotals, SlotTotals]
    rejects: np.ndarray
    stale_routed: int = 0  # requests the host routed to the champion while stale


def _sparse(a: np.ndarray) -> list[bytes]:
    flat = a.ravel()
    index = np.flatnonzero(flat).astype(np.uint32)
    # Positions as gaps (small numbers deflate well), values as they are.
    gaps = np.diff(index, prepend=np.uint32(0)).astype(np.uint32)
    return [gaps.tobytes(), flat[index].tobytes()]


def _dense(parts: list[bytes], like: np.ndarray) -> np.ndarray:
    gaps = np.frombuffer(parts[0], dtype=np.uint32)
    values = np.frombuffer(parts[1], dtype=like.dtype)
    if gaps.size != values.size:
        raise EvidenceError("evidence arrays of different lengths")
    out = np.zeros(like.size, dtype=like.dtype)
    index = np.cumsum(gaps, dtype=np.int64)
    if index.size and index[-1] >= like.size:
        raise EvidenceError("evidence index past the end of its array")
    out[index] = values
    return out.reshape(like.shape)


def encode(ev: HostEvidence, n_cells: int, n_buckets: int) -> bytes:
    slots = [[part for f in _FIELDS for part in _sparse(getattr(s, f))] for s in ev.slots]
    body = [FORMAT, n_cells, n_buckets, list(ev.slot_model), slots, _sparse(ev.rejects)]
    return zlib.compress(msgpack.packb(body, use_bin_type=True), 1)


def empty_totals(n_cells: int, n_buckets: int) -> SlotTotals:
    record = np.zeros((), dtype=layout.slot_dtype(n_cells, n_buckets))
    return SlotTotals(*(np.array(record[f]) for f in _FIELDS))


def decode(blob: bytes, n_cells: int, n_buckets: int) -> HostEvidence:
    try:
        body = msgpack.unpackb(zlib.decompress(blob), raw=False)
        fmt, cells, buckets, slot_model, slots, rejects = body
    except (ValueError, TypeError, zlib.error, msgpack.UnpackException) as e:
        raise EvidenceError(f"unreadable evidence: {e}") from None
    if fmt != FORMAT:
        raise EvidenceError(f"evidence format {fmt}; this host reads {FORMAT}")
    if (cells, buckets) != (n_cells, n_buckets):
        raise EvidenceError(
            f"evidence for {cells} segment cells and {buckets} buckets; this fleet's config "
            f"has {n_cells} and {n_buckets}"
        )
    like = empty_totals(n_cells, n_buckets)
    totals = []
    for parts in slots:
        arrays = [_dense(parts[2 * i : 2 * i + 2], getattr(like, f)) for i, f in enumerate(_FIELDS)]
        totals.append(SlotTotals(*arrays))
    reject_like = np.zeros(len(layout.REJECT_REASONS), dtype=np.int64)
    return HostEvidence(
        (int(slot_model[0]), int(slot_model[1])),
        (totals[0], totals[1]),
        _dense(rejects, reject_like),
    )


def merge(
    hosts: list[HostEvidence], slot_model: tuple[int, int], n_cells: int, n_buckets: int
) -> tuple[tuple[SlotTotals, SlotTotals], np.ndarray]:
    """The fleet's totals: each slot summed over the hosts that count the same model in
    it (a host still on another model for a slot adds nothing to that slot)."""
    zero = empty_totals(n_cells, n_buckets)
    sums = [zero, zero]
    rejects = np.zeros(len(layout.REJECT_REASONS), dtype=np.int64)
    for h in hosts:
        for s in (0, 1):
            if slot_model[s] and h.slot_model[s] == slot_model[s]:
                sums[s] = sums[s] + h.slots[s]
        rejects = rejects + h.rejects
    return (sums[0], sums[1]), rejects
