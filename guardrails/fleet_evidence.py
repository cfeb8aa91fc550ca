"""A host's evidence on the wire: what each sidecar publishes to the fleet store each tick.

One blob per host and tick, cumulative for the rollout (so a retried or repeated
publish carries nothing new and the store keeps only the newest), holding for each
slot the model version it counts and its `SlotTotals`, plus the host's reject
counts. The champion's counts are since the host first saw the rollout (its own
baseline), the challenger's since its slot was loaded.

Most of a slot's 170 KB are zeros (the latency histogram alone is 17,408 counts), so a
slot travels as two sparse vectors, its integer fields and its float fields laid end to
end: the gaps between non-zero positions and the values there, each in the narrowest
dtype that holds them. A busy host at the default segment space publishes about 40 KB.
The leader adds blobs straight into its sums with a numba kernel (no zlib: inflating
every host's blob each tick cost more than the whole merge may).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numba
import numpy as np

from guardrails.rollouts import pack_totals, unpack_totals
from router import layout
from router.shared_memory import STATE_FILE, SharedMemory
from router.snapshot import SlotTotals

FORMAT = 3  # 3: the paired sums
_FIELDS = tuple(SlotTotals.__dataclass_fields__)
_FLOAT_FIELDS = ("paired", "seg_pred_sum", "bucket_pred_sum")
_INT_FIELDS = tuple(f for f in _FIELDS if f not in _FLOAT_FIELDS)
_SIGNED = (np.int8, np.int16, np.int32, np.int64)
_UNSIGNED = (np.uint16, np.uint32)


class EvidenceError(ValueError):
    """A blob this host cannot read (another format, or another segment space)."""


@dataclass(frozen=True)
class HostEvidence:
    slot_model: tuple[int, int]  # model version each slot counts (0: none)
    slots: tuple[SlotTotals, SlotTotals]
    rejects: np.ndarray


def empty_totals(n_cells: int, n_buckets: int) -> SlotTotals:
    record = np.zeros((), dtype=layout.slot_dtype(n_cells, n_buckets))
    return SlotTotals(*(np.array(record[f]) for f in _FIELDS))


def _narrowest(a: np.ndarray, kinds: tuple[type, ...]) -> np.ndarray:
    if a.size == 0:
        return a.astype(kinds[0])
    lo, hi = int(a.min()), int(a.max())
    for kind in kinds:
        info = np.iinfo(kind)
        if info.min <= lo and hi <= info.max:
            return a.astype(kind)
    raise EvidenceError(f"a count of {hi} does not fit 64 bits")


def _sparse(flat: np.ndarray) -> list[bytes | str]:
    index = np.flatnonzero(flat)
    gaps = _narrowest(np.diff(index, prepend=0), _UNSIGNED)
    values = flat[index]
    if values.dtype.kind == "i":
        values = _narrowest(values, _SIGNED)
    return [gaps.dtype.str, gaps.tobytes(), values.dtype.str, values.tobytes()]


def _vectors(totals: SlotTotals) -> tuple[np.ndarray, np.ndarray]:
    ints = np.concatenate([getattr(totals, f).ravel() for f in _INT_FIELDS])
    floats = np.concatenate([getattr(totals, f).ravel() for f in _FLOAT_FIELDS])
    return ints, floats


def encode(ev: HostEvidence, n_cells: int, n_buckets: int) -> bytes:
    slots = []
    for s in ev.slots:
        ints, floats = _vectors(s)
        slots.append([_sparse(ints), _sparse(floats)])
    body = [FORMAT, n_cells, n_buckets, list(ev.slot_model), slots, _sparse(ev.rejects)]
    return bytes(msgpack.packb(body, use_bin_type=True))


@numba.njit(cache=True)
def scatter_add(acc: np.ndarray, gaps: np.ndarray, values: np.ndarray) -> None:
    """acc[positions] += values, the positions being the running sum of the gaps (the
    caller has checked that the last one falls inside acc)."""
    i = 0
    for k in range(gaps.size):
        i += gaps[k]
        acc[i] += values[k]


def scatter_add_reference(acc: np.ndarray, gaps: np.ndarray, values: np.ndarray) -> None:
    acc[np.cumsum(gaps.astype(np.int64))] += values


class Merger:
    """Sums hosts' blobs into one fleet `SlotTotals` per slot, decoding nothing dense."""

    def __init__(self, n_cells: int, n_buckets: int) -> None:
        self.n_cells, self.n_buckets = n_cells, n_buckets
        ints, floats = _vectors(empty_totals(n_cells, n_buckets))
        self._sizes = (ints.size, floats.size)
        self._n_rejects = len(layout.REJECT_REASONS)

    def _read(self, blob: bytes) -> list[Any]:
        try:
            body = msgpack.unpackb(blob, raw=False)
            fmt, cells, buckets = body[0], body[1], body[2]
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as e:
            raise EvidenceError(f"unreadable evidence: {e}") from None
        if fmt != FORMAT:
            raise EvidenceError(f"evidence format {fmt}; this host reads {FORMAT}")
        if (cells, buckets) != (self.n_cells, self.n_buckets):
            raise EvidenceError(
                f"evidence for {cells} segment cells and {buckets} buckets; this fleet's "
                f"config has {self.n_cells} and {self.n_buckets}"
            )
        return list(body)

    @staticmethod
    def _vector(acc: np.ndarray, part: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A sparse vector of a blob, checked to fit `acc`, to add later."""
        try:
            gap_kind, gaps, value_kind, values = part
            g = np.frombuffer(gaps, dtype=np.dtype(gap_kind))
            v = np.frombuffer(values, dtype=np.dtype(value_kind))
        except (ValueError, TypeError) as e:
            raise EvidenceError(f"unreadable evidence vector: {e}") from None
        if g.size != v.size or g.dtype.kind != "u" or v.dtype.kind != acc.dtype.kind:
            raise EvidenceError("evidence vector of the wrong shape or type")
        if g.size and int(g.sum(dtype=np.uint64)) >= acc.size:
            raise EvidenceError("evidence position past the end of its vector")
        return acc, g, v

    def merge(
        self, blobs: list[bytes], slot_model: tuple[int, int]
    ) -> tuple[tuple[SlotTotals, SlotTotals], np.ndarray, dict[int, str]]:
        """The fleet's totals: each slot summed over the hosts that count the same model in
        it (a host still on another model for a slot adds nothing to that slot), the
        summed rejects, and {blob index: why it was left out} for unreadable blobs."""
        sums: list[list[np.ndarray]] = [
            [np.zeros(self._sizes[0], np.int64), np.zeros(self._sizes[1])] for _ in (0, 1)
        ]
        rejects = np.zeros(self._n_rejects, np.int64)
        bad: dict[int, str] = {}
        for n, blob in enumerate(blobs):
            try:
                body = self._read(blob)
                models, slots = body[3], body[4]
                # Every vector checked before any is added: a bad blob adds nothing.
                parts = [self._vector(rejects, body[5])]
                for s in (0, 1):
                    if slot_model[s] and int(models[s]) == slot_model[s]:
                        parts.append(self._vector(sums[s][0], slots[s][0]))
                        parts.append(self._vector(sums[s][1], slots[s][1]))
            except (EvidenceError, TypeError, ValueError, IndexError, KeyError) as e:
                bad[n] = str(e)
                continue
            for acc, g, v in parts:
                scatter_add(acc, g, v)
        totals = tuple(self._totals(i, f) for i, f in sums)
        return (totals[0], totals[1]), rejects, bad

    def _totals(self, ints: np.ndarray, floats: np.ndarray) -> SlotTotals:
        out = empty_totals(self.n_cells, self.n_buckets)
        for vector, names in ((ints, _INT_FIELDS), (floats, _FLOAT_FIELDS)):
            at = 0
            for name in names:
                field = getattr(out, name)
                field.ravel()[:] = vector[at : at + field.size]
                at += field.size
        return out

    def decode(self, blob: bytes) -> HostEvidence:
        """One blob as dense totals (tests, diagnostics; the leader uses `merge`)."""
        body = self._read(blob)
        models = (int(body[3][0]), int(body[3][1]))
        totals, rejects, bad = self.merge([blob], models)
        if bad:
            raise EvidenceError(bad[0])
        zero = empty_totals(self.n_cells, self.n_buckets)
        slots = tuple(totals[s] if models[s] else zero for s in (0, 1))
        return HostEvidence(models, (slots[0], slots[1]), rejects)


# -- whose counts these are, and since when ------------------------------------------------


def incarnation(state_dir: Path, shm: SharedMemory) -> str:
    """Whose counts these are: a random id kept in the state directory, and when its state
    file was made. A wiped state directory (or a new state file) is a new incarnation, so
    its fresh counts never overwrite what the old one published; a restart is not."""
    path = state_dir / "fleet.incarnation"
    try:
        base = path.read_text().strip()
    except FileNotFoundError:
        base = secrets.token_hex(6)
        path.write_text(base + "\n")
    created = int(shm.control["created_ns"]) or (state_dir / STATE_FILE).stat().st_ino
    return f"{base}-{created:x}"


_BASELINE = "fleet.baseline"


def load_baseline(state_dir: Path) -> tuple[str, SlotTotals | None]:
    """The rollout this host last took its champion baseline for, and the baseline: its
    champion counts are published since then (kept across restarts)."""
    try:
        raw = (state_dir / _BASELINE).read_bytes()
    except FileNotFoundError:
        return "", None
    rollout_id, _, blob = raw.partition(b"\n")
    return rollout_id.decode(), unpack_totals(blob)


def save_baseline(state_dir: Path, rollout_id: str, totals: SlotTotals) -> None:
    path = state_dir / _BASELINE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(rollout_id.encode() + b"\n" + (pack_totals(totals) or b""))
    tmp.replace(path)
