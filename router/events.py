"""/events: each outcome event verified, counted at most once, recorded into the slab.

An event is `{"token", "type": "impression"|"click", "prediction", "candidate"?}`:
`candidate` is the index of the answer's candidate it is about (default 0, for clients
that show one candidate per answer), below the row count its token carries. Its key
for exactly-once counting is (token's host and nonce, candidate, type); `router.dedupe`
decides a whole batch in one locked step:

- new: counted;
- duplicate (that key was counted before, on any worker of this host): accepted, not
  counted again, reported in `"duplicates"`;
- a click whose impression this host never counted: refused as
  `click_without_impression` and not remembered, so the click posted again after its
  impression counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from router import layout, recording
from router.bloom import Verdict
from router.codec import Rejected
from router.config import Config
from router.dedupe import Dedupe, FilterBusy
from router.layout import Counter, Reject
from router.tokens import Claims, TokenError, TokenSigner

MAX_ERRORS = 100  # errors listed in one answer; all of them are counted
Checked = tuple[int, Claims, int, int, float]  # index, claims, candidate, click, prediction


class EventCounter:
    def __init__(self, signer: TokenSigner, dedupe: Dedupe, config: Config) -> None:
        self.signer = signer
        self.dedupe = dedupe
        self.max_events = config.serve.max_events
        self.n_cells = config.segments.n_cells
        self.n_buckets = config.n_buckets
        self.bucket_width = config.bucket_width
        self.tables = layout.table_words(self.n_cells, config.n_buckets)

    def count(
        self,
        req: Any,
        now: int,
        version_slot: dict[int, int],
        slot_addr: list[int],
        reject: Callable[[Reject], None],
    ) -> dict[str, Any]:
        """Count one /events body; the answer's `accepted` includes the duplicates."""
        if type(req) is not dict or type(req.get("events")) is not list:
            raise Rejected(Reject.BAD_EVENT, "the body must be a map with an 'events' list")
        events = req["events"]
        if len(events) > self.max_events:
            raise Rejected(
                Reject.TOO_MANY_EVENTS,
                f"{len(events)} events; the limit is {self.max_events}",
                413,
            )
        refused: list[tuple[int, Reject]] = []
        valid: list[Checked] = []
        for i, ev in enumerate(events):
            checked = self._check(ev, now, version_slot)
            if isinstance(checked, Reject):
                refused.append((i, checked))
            else:
                valid.append((i, *checked))
        duplicates = self._record(valid, refused, version_slot, slot_addr) if valid else 0
        for _, reason in refused:
            reject(reason)
        refused.sort()
        return {
            "accepted": len(events) - len(refused),
            "rejected": len(refused),
            "duplicates": duplicates,
            "errors": [{"index": i, "reason": r.value} for i, r in refused[:MAX_ERRORS]],
        }

    def _check(
        self, ev: Any, now: int, version_slot: dict[int, int]
    ) -> tuple[Claims, int, int, float] | Reject:
        """(claims, candidate, click, prediction) of a well-formed event, else a reason."""
        if type(ev) is not dict:
            return Reject.BAD_EVENT
        kind = ev.get("type")
        if kind == "impression":
            click = 0
        elif kind == "click":
            click = 1
        else:
            return Reject.BAD_EVENT
        p = ev.get("prediction")
        if not (type(p) is float or type(p) is int) or not 0.0 <= p <= 1.0:
            return Reject.BAD_PREDICTION
        try:
            claims = self.signer.verify(ev.get("token"), now)
        except TokenError as e:
            return e.reason
        candidate = ev.get("candidate", 0)
        if type(candidate) is not int or not 0 <= candidate < claims.rows:
            return Reject.BAD_CANDIDATE
        if claims.version not in version_slot:
            return Reject.UNKNOWN_MODEL_VERSION
        if claims.cell >= self.n_cells:
            return Reject.BAD_TOKEN
        return claims, candidate, click, float(p)

    def _record(
        self,
        valid: list[Checked],
        refused: list[tuple[int, Reject]],
        version_slot: dict[int, int],
        slot_addr: list[int],
    ) -> int:
        """Decide the valid events in one locked step and record the new ones; the ones
        refused join `refused`. Returns the number of duplicates."""
        n = len(valid)
        nonce = np.empty(n, np.uint64)
        tag = np.empty(n, np.uint64)
        issued = np.empty(n, np.int64)
        click = np.empty(n, np.int64)
        for j, (_, claims, candidate, c, _) in enumerate(valid):
            nonce[j] = claims.nonce
            tag[j] = claims.host << 32 | candidate
            issued[j] = claims.issued
            click[j] = c
        try:
            verdicts = self.dedupe.check(nonce, tag, issued, click).tolist()
        except FilterBusy as e:
            # Nothing of the batch was counted: the client posts it again.
            raise Rejected(Reject.MODEL_UNAVAILABLE, f"{e}; post the batch again", 503) from None
        duplicates = 0
        host = self.signer.host
        for (i, claims, _, c, p), verdict in zip(valid, verdicts, strict=True):
            addr = slot_addr[version_slot[claims.version]]
            if verdict == Verdict.NEW:
                bucket = min(int(p / self.bucket_width), self.n_buckets - 1)
                recording.record_event(addr, self.tables, claims.cell, bucket, c, p)
                if claims.host != host:
                    recording.bump(addr, Counter.FOREIGN_EVENTS)
            elif verdict == Verdict.DUPLICATE:
                duplicates += 1
                recording.bump(addr, Counter.EVENT_DUPLICATES)
            elif verdict == Verdict.ORPHAN:
                refused.append((i, Reject.CLICK_WITHOUT_IMPRESSION))
                recording.bump(addr, Counter.ORPHAN_CLICKS)
            else:
                refused.append((i, Reject.EXPIRED_TOKEN))
        return duplicates
