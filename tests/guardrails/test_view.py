"""The status document is a pure function of the rollout's state (guardrails/view.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from guardrails import checks, view
from guardrails.evidence import Result
from guardrails.fleet_evidence import empty_totals
from guardrails.measures import SegmentCodes, measure
from guardrails.policy import Policy, State
from guardrails.rollouts import Event, EventKind, Rollout, RolloutState
from router import status as status_file
from router.config import Config
from router.snapshot import SlotTotals
from router.status import EvaluatorStatus

NOW = 1_800_000_000.0


def _totals(impressions: int, clicks: int) -> SlotTotals:
    config = Config.from_dict({})
    t = empty_totals(config.segments.n_cells, config.n_buckets)
    t.seg_events[0] = (impressions, clicks)
    t.seg_requests[0] = (impressions, 0)
    t.counters[0] = impressions
    t.seg_pred_sum[0] = impressions * 0.02
    return t


def _evidence(policy: Policy) -> checks.Evidence:
    codes = SegmentCodes(Config.from_dict({}).segments)
    champion = measure(_totals(100_000, 2_000), codes)
    challenger = measure(_totals(10_000, 230), codes)
    return checks.gather(policy, champion, challenger, None, (90_000, 10_000), 1000, 3600.0, 7200.0)


def _rollout(state: RolloutState = RolloutState.RUNNING) -> Rollout:
    return Rollout(
        id="r1",
        challenger=2,
        champion=1,
        state=state,
        phase=2,
        started=NOW - 7200,
        phase_started=NOW - 3600,
        phases=[
            {"phase": 1, "entered": NOW - 7200, "exited": NOW - 3600, "result": "passed"},
            {"phase": 2, "entered": NOW - 3600, "exited": None, "result": "current"},
        ],
    )


def _status(**given: Any) -> EvaluatorStatus:
    policy = given.pop("policy", Policy())
    args: dict[str, Any] = {
        "policy": policy,
        "rollout": None,
        "results": [],
        "evidence": None,
        "series": view.Series(),
        "events": [],
        "counters": {"rollbacks": 0, "promotions": 0, "stops": 0},
        "split_bp": 0,
        "bucket_width": 0.01,
        "tick_ms": 1.5,
        "now": NOW,
    }
    args.update(given)
    return view.status(**args)


def _written(s: EvaluatorStatus) -> Any:
    """The document as status.json holds it: strict JSON (no NaN, no infinity)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in status.json")

    return json.loads(status_file.encode(s), parse_constant=refuse)


def test_view_status_without_a_rollout_is_idle_and_says_what_to_do() -> None:
    s = _status()
    assert (s["phase"], s["state"], s["split_bp"], s["rollout"]) == (0, "idle", 0, None)
    assert s["guardrails"] == [] and s["comparison"] is None
    assert s["next"].startswith("no rollout")
    assert [p["result"] for p in s["phases"]] == ["pending"] * 5
    _written(s)


def test_view_status_of_a_running_rollout_holds_its_phase_guardrails_and_evidence() -> None:
    policy = Policy()
    results = [
        Result("calibration", 1.02, "0.85-1.15", State.PASS, 2),
        Result("min_duration", 3600.0, ">= 172800 s", State.WAITING, 2),
    ]
    s = _status(
        policy=policy,
        rollout=_rollout(),
        results=results,
        evidence=_evidence(policy),
        split_bp=1000,
    )
    assert (s["phase"], s["state"], s["split_bp"]) == (2, "running", 1000)
    assert s["rollout"] is not None and s["rollout"]["time_in_phase_s"] == 3600
    assert [g["name"] for g in s["guardrails"]] == ["calibration", "min_duration"]
    assert s["next"].startswith("advance to phase 3 (20%) when: min_duration")
    assert s["evidence"]["challenger"] == {
        "requests": 10_000,
        "errors": 0,
        "impressions": 10_000,
        "clicks": 230,
    }
    assert s["comparison"] is not None and 0.5 < s["comparison"]["p_better"] <= 1
    assert [p["result"] for p in s["phases"]][:3] == ["passed", "current", "pending"]
    _written(s)


def test_view_status_after_the_rollout_keeps_it_as_the_last_one() -> None:
    r = _rollout(RolloutState.ROLLED_BACK)
    r.outcome, r.reason, r.ended = "rolled_back", "calibration 1.6 (threshold 0.85-1.15)", NOW
    s = _status(rollout=r, results=[Result("calibration", 1.6, "0.85-1.15", State.FAIL, 2)])
    assert (s["phase"], s["state"], s["rollout"]) == (0, "idle", None)
    assert s["guardrails"] == []  # the last rollout's results are not this moment's
    assert s["last_rollout"] is not None and s["last_rollout"]["outcome"] == "rolled_back"


def test_view_status_is_written_as_json_without_nan() -> None:
    results = [Result("latency_p99", float("nan"), "< 10 ms", State.WAITING, 1)]
    s = _written(_status(rollout=_rollout(), results=results))
    assert s["guardrails"][0]["value"] is None
    _written(s)


def test_view_event_brief_names_what_the_dashboard_lists() -> None:
    event = Event(7, "r1", NOW, EventKind.ROLLED_BACK, 2, {"reason": "x", "guardrail": "g"})
    brief = view.event_brief(event)
    assert brief["kind"] == "rolled_back" and brief["guardrail"] == "g" and brief["detail"] == "x"
    assert np.isclose(brief["t"], NOW)
