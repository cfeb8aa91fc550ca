"""Phase 2's guardrails: is the challenger calibrated? Predicted clicks (the sum of predicted
CTR over impressions) against actual clicks, overall and per prediction bucket."""

from __future__ import annotations

import numpy as np

from guardrails.evidence import Evidence, Result
from guardrails.measures import FAIL, PASS, calibration_kernel
from guardrails.policy import Policy, State
from guardrails.safety import two_sided_z


def _state(code: int) -> State:
    return State.FAIL if code == FAIL else State.PASS if code == PASS else State.WAITING


def calibration(p: Policy, e: Evidence) -> Result:
    g = p.guards
    arm = e.challenger
    _, _, _, state = calibration_kernel(
        np.array([float(arm.clicks)]),
        np.array([arm.predicted]),
        g.calibration_low,
        g.calibration_high,
        two_sided_z(g.confidence),
        float(g.min_calibration_clicks),
    )
    return Result(
        "calibration",
        arm.calibration,
        f"{g.calibration_low:g}–{g.calibration_high:g}",
        _state(int(state[0])),
        2,
        f"predicted / actual clicks, {arm.clicks} clicks",
    )


def calibration_buckets(p: Policy, e: Evidence) -> Result:
    """Per prediction bucket; the confidence is split across the judged buckets (Bonferroni),
    as many buckets are looked at together."""
    g = p.guards
    arm = e.challenger
    judged = max(int((arm.bucket_clicks >= g.min_bucket_clicks).sum()), 1)
    z = two_sided_z(1 - (1 - g.confidence) / judged)
    ratio, _, _, state = calibration_kernel(
        arm.bucket_clicks,
        arm.bucket_predicted,
        g.bucket_low,
        g.bucket_high,
        z,
        float(g.min_bucket_clicks),
    )
    threshold = f"{g.bucket_low:g}–{g.bucket_high:g}"
    failing = np.flatnonzero(state == FAIL)
    if failing.size:
        i = int(failing[np.argmax(np.abs(np.log(ratio[failing])))])
        return Result(
            "calibration_buckets",
            float(ratio[i]),
            threshold,
            State.FAIL,
            2,
            f"bucket {i} ({int(arm.bucket_clicks[i])} clicks)",
        )
    judged_mask = arm.bucket_clicks >= g.min_bucket_clicks
    if not judged_mask.any():
        return Result(
            "calibration_buckets",
            None,
            threshold,
            State.WAITING,
            2,
            f"no bucket has {g.min_bucket_clicks} clicks yet",
        )
    # A judged bucket passes unless it is surely outside the band: one whose ratio is out
    # only by noise is not failed, and a truly bad one fails as its clicks grow (this check
    # keeps applying in every later phase).
    judged_ratio = ratio[judged_mask]
    worst = float(judged_ratio[np.argmax(np.abs(np.log(judged_ratio)))])
    noisy = int((state[judged_mask] != PASS).sum())
    thin = int(((arm.bucket_clicks > 0) & ~judged_mask).sum())
    return Result(
        "calibration_buckets",
        worst,
        threshold,
        State.PASS,
        2,
        f"{int(judged_mask.sum())} buckets judged ({noisy} outside only by noise), "
        f"{thin} with too few clicks to judge",
    )
