"""The Prometheus exposition, parsed by prometheus_client: from a built snapshot and a server."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import Server
from prometheus_client.parser import text_string_to_metric_families

from router import control, hdr, layout
from router import exposition as prom
from router.snapshot import SlotTotals, Snapshot

ROW = [0.5, 1.0, -0.5, 2.0]
STATUS: dict[str, Any] = {
    "phase": 2,
    "state": "running",
    "rollout": {"id": "r1", "champion": "1", "challenger": "2", "time_in_phase_s": 42.5},
    "guardrails": [
        {"name": "error_rate", "value": 0.0002, "threshold": "< 0.1%", "state": "pass", "phase": 1},
        {
            "name": "calibration",
            "value": None,
            "threshold": "0.85–1.15",
            "state": "waiting",
            "phase": 2,
        },
        {"name": 'odd "name"\\x', "value": "n/a", "threshold": "-", "state": "fail", "phase": 2},
    ],
    "comparison": {"p_better": 0.7, "p_worse": 0.3, "uplift": 0.012},
    "counters": {"rollbacks": 3, "promotions": 1, "stops": 0},
}


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(text: str, name: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _snapshot(latencies_us: list[int]) -> Snapshot:
    records = np.zeros(2, dtype=layout.slot_dtype(4, 100))
    for us in latencies_us:
        records[0]["latency"][hdr.python_counts_index(us)] += 1
    records[0]["counters"][layout.Counter.REQUESTS] = len(latencies_us)
    fields = [f.name for f in dataclasses.fields(SlotTotals)]
    slots = [SlotTotals(*(records[s][f] for f in fields)) for s in range(2)]
    rejects = np.zeros(len(layout.REJECT_REASONS), dtype=np.int64)
    rejects[layout.REJECT_INDEX["bad_token"]] = 7
    now = time.time_ns()
    return Snapshot(
        taken_ns=now,
        control=control.pack(1000, 0, True, 1),
        heartbeat_ns=now - 500_000_000,
        slot_model=(1, 2),
        slot_seq=(1, 1),
        slots=(slots[0], slots[1]),
        rejects=rejects,
        live_workers=2,
    )


MODELS: list[Any] = [
    SimpleNamespace(version=1, label="tiny:1"),
    SimpleNamespace(version=2, label="tiny:2"),
]


def test_metrics_midpoints_match_hdr_bucket_ranges() -> None:
    mid = prom.midpoints_us()
    for i in [0, 1, 2047, 2048, 2049, 3000, 4095, 4096, 9000, hdr.COUNTS_LEN - 1]:
        low = hdr.value_from_index(i)
        assert mid[i] == (low + hdr.highest_equivalent_value(low)) / 2, i


def test_metrics_latency_histogram_from_hdr_counts() -> None:
    latencies = [80, 300, 300, 900, 4000, 12_000, 700_000, 2_000_000]
    text = prom.render(_snapshot(latencies), MODELS, stale=False, effective_split_bp=1000)
    name = "rampart_predict_latency_seconds"
    family = _families(text)[name]
    assert family.type == "histogram"
    champion = [s for s in family.samples if s.labels.get("arm") == "champion"]
    buckets = {s.labels["le"]: s.value for s in champion if s.name == f"{name}_bucket"}
    expected = {
        f"{b / 1e6:g}": sum(1 for v in latencies if v <= b) for b in prom.LATENCY_BUCKETS_US
    }
    assert {le: buckets[le] for le in expected} == expected
    assert buckets["+Inf"] == len(latencies)
    counts = [buckets[le] for le in expected]
    assert counts == sorted(counts)
    (count,) = (s.value for s in champion if s.name == f"{name}_count")
    (total,) = (s.value for s in champion if s.name == f"{name}_sum")
    assert count == len(latencies)
    # HDR keeps 3 significant digits: the midpoint estimate is within 0.1% of the true sum.
    assert total == pytest.approx(sum(latencies) / 1e6, rel=1e-3)


def test_metrics_rollout_state_from_the_evaluator_status() -> None:
    text = prom.render(_snapshot([100]), MODELS, stale=True, effective_split_bp=0, status=STATUS)
    value = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert value[("rampart_rollout_phase", ())] == 2
    assert value[("rampart_split_ratio", ())] == 0.1
    assert value[("rampart_effective_split_ratio", ())] == 0
    assert value[("rampart_evaluator_stale", ())] == 1
    assert value[("rampart_rollout_state", (("state", "running"),))] == 1
    assert sum(s.value for s in _samples(text, "rampart_rollout_state")) == 1
    assert value[("rampart_rollout_phase_elapsed_seconds", ())] == 42.5
    states = {s.labels["guardrail"]: s.value for s in _samples(text, "rampart_guardrail_state")}
    assert states == {"error_rate": 1, "calibration": 0, 'odd "name"\\x': -1}
    values = {s.labels["guardrail"]: s.value for s in _samples(text, "rampart_guardrail_value")}
    assert values == {"error_rate": 0.0002}  # null and text values have no sample
    assert value[("rampart_rollbacks_total", ())] == 3
    assert value[("rampart_promotions_total", ())] == 1
    assert value[("rampart_challenger_better_probability", ())] == 0.7
    assert value[("rampart_rejected_total", (("reason", "bad_token"),))] == 7
    info = _samples(text, "rampart_rollout_info")[0].labels
    assert info == {"rollout_id": "r1", "champion": "1", "challenger": "2"}


def test_metrics_declare_every_family_before_the_evaluator_writes() -> None:
    text = prom.render(_snapshot([]), MODELS, stale=False, effective_split_bp=0, status=None)
    families = _families(text)
    for name in (
        "rampart_guardrail_state",
        "rampart_rollout_phase",
        "rampart_rollbacks",
        "rampart_promotions",
    ):
        assert name in families
    assert _samples(text, "rampart_rollout_phase")[0].value == 0
    assert _samples(text, "rampart_rollbacks_total")[0].value == 0
    idle = [s for s in _samples(text, "rampart_rollout_state") if s.value == 1]
    assert [s.labels["state"] for s in idle] == ["idle"]


@pytest.mark.parametrize(
    "status", [pytest.param(STATUS, id="rollout"), pytest.param(None, id="no-evaluator")]
)
def test_metrics_pass_promtool_check_metrics(status: dict[str, Any] | None) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian: the prometheus package)")
    text = prom.render(
        _snapshot([80, 300, 4000]), MODELS, stale=False, effective_split_bp=300, status=status
    )
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # Exit 0 and no lint lines: promtool prints every problem it finds (naming, units, help).
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_metrics_follow_prometheus_naming(server: Server) -> None:
    assert server.admin("start", {"version": "2"}).status_code == 200
    with httpx.Client() as client:
        for i in range(300):
            r = client.post(
                f"{server.url}/predict", json={"request_id": f"m{i}", "features": [ROW]}
            )
            assert r.status_code == 200
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(r.text))
    for f in families:
        assert f.name.startswith("rampart_"), f.name
        assert f.type in ("counter", "gauge", "histogram"), f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
    latency = {f.name: f for f in families}["rampart_predict_latency_seconds"]
    total = 0.0
    for arm in ("champion", "challenger"):
        requests = [
            s.value for s in _samples(r.text, "rampart_requests_total") if s.labels["arm"] == arm
        ]
        counts = [
            s.value for s in latency.samples if s.name.endswith("_count") and s.labels["arm"] == arm
        ]
        assert counts == requests  # one latency record per request of the arm
        total += sum(requests)
    assert total == 300


def test_metrics_match_status_on_a_real_server(server: Server) -> None:
    assert server.admin("start", {"version": "2"}).status_code == 200
    deadline = time.monotonic() + 10
    while True:
        # /status and /metrics read the same status file at slightly different times: retry.
        status = httpx.get(f"{server.url}/status", timeout=5).json()
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        got = {
            "phase": _samples(text, "rampart_rollout_phase")[0].value,
            "split": _samples(text, "rampart_split_ratio")[0].value,
            "guardrails": {
                (s.labels["guardrail"], s.labels["phase"]): s.value
                for s in _samples(text, "rampart_guardrail_state")
            },
        }
        want = {
            "phase": status["phase"],
            "split": status["split_bp"] / 10_000,
            "guardrails": {
                (g["name"], str(g.get("phase", ""))): prom.GUARDRAIL_STATE[g["state"]]
                for g in status.get("guardrails") or []
            },
        }
        if got == want and status["split_bp"] == 300:
            break
        assert time.monotonic() < deadline, f"/metrics {got} never matched /status {want}"
        time.sleep(0.2)
