"""The shared-memory layout, defined once as numpy structured dtypes.

One file in the state directory holds a control block followed by one slab per
worker::

    +-------------------------+  offset 0
    | control block (4 KiB)   |  written by the evaluator only
    +-------------------------+  CONTROL_BYTES
    | slab 0                  |  written by the worker that holds slab 0's lock
    | slab 1                  |
    | ...                     |
    +-------------------------+

A slab holds two *slots*, one per loaded model (the control word says which
slot is the champion). Writers (the numba kernels in `router.slab`) take their
offsets from these dtypes, and readers view the file through the same dtypes,
so there is exactly one definition of where anything lives.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

import numpy as np

from router import hdr

MAGIC = 0x3154524150_4D4152  # "RAMPART1" little-endian-ish tag
LAYOUT_VERSION = 2  # 2: paired sums in every slot (router.paired)
N_SLOTS = 2
CONTROL_BYTES = 4096
PAGE = 4096
N_PRED_BINS = 1000  # prediction histogram: 0.1%-wide bins over [0, 1]
BASIS_POINTS = 10_000


class Counter(IntEnum):
    """Per-slot request counters (index into a slot's `counters`)."""

    REQUESTS = 0  # requests the split assigned to this slot
    CANDIDATES = 1  # predictions served by this slot's model
    ERR_RAISED = 2
    ERR_TIMEOUT = 3
    ERR_NAN = 4
    ERR_RANGE = 5
    ERR_FEATURES = 6  # positional row this model cannot take its features from
    FALLBACKS = 7  # requests of this slot answered by the champion instead
    OUT_OF_RANGE_PREDICTIONS = 8  # individual predictions outside [0, 1] or NaN
    STALE_ROUTED = 9  # requests routed to the champion because the heartbeat was stale
    EVENT_DUPLICATES = 10  # events accepted but not counted again (router.dedupe)
    ORPHAN_CLICKS = 11  # clicks refused because their impression was never counted here
    FOREIGN_EVENTS = 12  # events counted here for a token another host issued
    SHADOW_DROPPED = 13  # shadow copies not judged: the queue was full, or the run starved
    PAIRED = 14  # challenger requests whose rows the champion also scored (router.paired)
    PAIRS_DROPPED = 15  # sampled for pairing but not paired: over the rate cap, or the
    # champion failed on the rows, or the split changed before it ran


N_COUNTERS = 16
# The paired sums of a challenger slot, over rows both arms scored: (b = the champion's
# prediction, c = the challenger's) n, sum b, sum c, sum b^2, sum c^2, sum b*c.
N_PAIRED = 6
ERROR_COUNTERS = (
    Counter.ERR_RAISED,
    Counter.ERR_TIMEOUT,
    Counter.ERR_NAN,
    Counter.ERR_RANGE,
    Counter.ERR_FEATURES,
)


class Reject(StrEnum):
    """Stable reason codes for refused input. The order is the slab's `rejects` slots:
    append new reasons, never reorder (a state file's counts would change meaning)."""

    MALFORMED_BODY = "malformed_body"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MISSING_REQUEST_ID = "missing_request_id"
    REQUEST_ID_TOO_LONG = "request_id_too_long"
    BAD_FEATURES = "bad_features"
    WRONG_ROW_WIDTH = "wrong_row_width"
    NON_FINITE_FEATURE = "non_finite_feature"
    UNKNOWN_FEATURE = "unknown_feature"
    MISSING_FEATURE = "missing_feature"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    BODY_TOO_LARGE = "body_too_large"
    BAD_SEGMENT = "bad_segment"
    BAD_TOKEN = "bad_token"
    EXPIRED_TOKEN = "expired_token"
    UNKNOWN_MODEL_VERSION = "unknown_model_version"
    BAD_EVENT = "bad_event"
    BAD_PREDICTION = "bad_prediction"
    TOO_MANY_EVENTS = "too_many_events"
    MODEL_UNAVAILABLE = "model_unavailable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_COMMAND = "unknown_command"
    NOT_FOUND = "not_found"  # a path this listener does not serve
    BAD_CANDIDATE = "bad_candidate"
    CLICK_WITHOUT_IMPRESSION = "click_without_impression"
    BODY_TIMEOUT = "body_timeout"  # the body did not arrive within [serve] body_timeout_s


N_REJECT_SLOTS = 32
REJECT_REASONS: tuple[str, ...] = tuple(r.value for r in Reject)
REJECT_INDEX = {reason: i for i, reason in enumerate(REJECT_REASONS)}
assert len(REJECT_REASONS) <= N_REJECT_SLOTS

CONTROL_DTYPE = np.dtype(
    {
        "names": [
            "magic",
            "layout_version",
            "n_slabs",
            "n_cells",
            "n_buckets",
            "control",
            "heartbeat_ns",
            "hash_seed",
            "evaluator_pid",
            "slot_model",
            "slot_seq",
            "created_ns",
            "status_seq",
            "status_ns",
            "status_word",
        ],
        "formats": [
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<i8",
            "<u8",
            "<i8",
            "(2,)<i8",
            "(2,)<u8",
            "<i8",
            "<u8",
            "<i8",
            "<u8",
        ],
        # The control word sits alone at the start of its own cache line.
        # created_ns (when the file was made; 0 in files older than it) names this file's
        # counts: fleet mode publishes them as one incarnation.
        # status_seq / status_ns / status_word: status.json's seqlock (odd while it is
        # written), when it was last published and the control word in force then
        # (router.status); 0 in files older than them.
        "offsets": [0, 8, 16, 24, 32, 64, 128, 136, 144, 192, 208, 256, 320, 328, 336],
        "itemsize": CONTROL_BYTES,
    }
)


def slot_dtype(n_cells: int, n_buckets: int) -> np.dtype:
    """One model slot's records. Fixed-size fields first: the hot-path kernels
    compile their offsets in as constants; the segment/bucket tables follow."""
    return np.dtype(
        [
            ("counters", "<i8", (N_COUNTERS,)),
            ("latency", "<i8", (hdr.COUNTS_LEN,)),
            ("pred_hist", "<i8", (N_PRED_BINS,)),
            ("paired", "<f8", (N_PAIRED,)),  # see N_PAIRED
            ("seg_requests", "<i8", (n_cells, 2)),  # requests, errors
            ("seg_events", "<i8", (n_cells, 2)),  # impressions, clicks
            ("seg_pred_sum", "<f8", (n_cells,)),  # sum of predicted CTR over impressions
            ("bucket_events", "<i8", (n_buckets, 2)),  # impressions, clicks
            ("bucket_pred_sum", "<f8", (n_buckets,)),
        ]
    )


def slab_dtype(n_cells: int, n_buckets: int) -> np.dtype:
    slot = slot_dtype(n_cells, n_buckets)
    header = 64 + 8 * N_REJECT_SLOTS
    body = header + N_SLOTS * slot.itemsize
    itemsize = -(-body // PAGE) * PAGE
    return np.dtype(
        {
            # status_wanted_ns: when this worker last served /status (router.status).
            "names": [
                "owner_pid",
                "heartbeat_ns",
                "slot_seq",
                "status_wanted_ns",
                "rejects",
                "slots",
            ],
            "formats": [
                "<i8",
                "<i8",
                "(2,)<u8",
                "<i8",
                f"({N_REJECT_SLOTS},)<i8",
                (slot, (N_SLOTS,)),
            ],
            "offsets": [0, 8, 16, 32, 64, header],
            "itemsize": itemsize,
        }
    )


# Word offsets (int64 units) of the fixed fields inside a slot, for the kernels.
def _word(dtype: np.dtype, name: str) -> int:
    fields = dtype.fields
    assert fields is not None
    return int(fields[name][1]) // 8


_FIXED = slot_dtype(1, 1)
COUNTERS_WORD = _word(_FIXED, "counters")
LATENCY_WORD = _word(_FIXED, "latency")
PRED_HIST_WORD = _word(_FIXED, "pred_hist")
PAIRED_WORD = _word(_FIXED, "paired")
SEG_REQUESTS_WORD = _word(_FIXED, "seg_requests")


def table_words(n_cells: int, n_buckets: int) -> tuple[int, int, int, int]:
    """Word offsets of the variable tables in a slot: seg_events, seg_pred_sum,
    bucket_events, bucket_pred_sum."""
    slot = slot_dtype(n_cells, n_buckets)
    return (
        _word(slot, "seg_events"),
        _word(slot, "seg_pred_sum"),
        _word(slot, "bucket_events"),
        _word(slot, "bucket_pred_sum"),
    )
