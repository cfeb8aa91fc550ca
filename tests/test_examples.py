"""The files in examples/: they load, and every metric their queries name is one Rampart exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Server
from prometheus_client.parser import text_string_to_metric_families

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Series Prometheus itself adds to every scrape target.
SYNTHETIC = {"up"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
SECRETS = {"RAMPART_ADMIN_TOKEN", "RAMPART_TOKEN_SECRET", "RAMPART_SLACK_WEBHOOK"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers, including Grafana variables
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in PROMQL_KEYWORDS:
            names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param("up == 0", {"up"}, id="bare"),
        pytest.param(
            'histogram_quantile(0.99, sum by (arm, le) (rate(a_bucket{x=~"$i"}[$__rate_i])))',
            {"a_bucket"},
            id="quantile",
        ),
        pytest.param(
            "sum(rate(a_total[5m])) by (arm) / on(arm) b > 1e3", {"a_total", "b"}, id="by"
        ),
        pytest.param("max_over_time(c[1m]) == 1 and d offset 5m", {"c", "d"}, id="keywords"),
    ],
)
def test_examples_metric_names_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _grafana() -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / "grafana-dashboard.json").read_text()))


def _alerts() -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "prometheus-alerts.yml").read_text()))


def _queries() -> list[str]:
    dashboard = _grafana()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        # label_values(metric, label) is Grafana's, not PromQL: check its metric.
        exprs += re.findall(r"label_values\((\w+)", variable["definition"])
    exprs += [r["expr"] for g in _alerts()["groups"] for r in g["rules"]]
    return exprs


def test_examples_grafana_dashboard_has_the_rollout_panels() -> None:
    dashboard = _grafana()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert (
            set(p["gridPos"]) == {"x", "y", "w", "h"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
    named = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "rampart_split_ratio",
        "rampart_rollout_phase",
        "rampart_guardrail_state",
        "rampart_predict_latency_seconds_bucket",
        "rampart_model_errors_total",
        "rampart_rollbacks_total",
    ):
        assert metric in named
    assert "histogram_quantile(0.99" in named


def test_examples_alert_rules_are_complete() -> None:
    rules = [r for g in _alerts()["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"RampartRollback", "RampartEvaluatorStale", "RampartChallengerLatencyHigh"} <= names
    for r in rules:
        assert r["expr"] and r["labels"]["severity"] in ("page", "warn"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]


def test_examples_sidecar_pod_probes_state_and_secrets() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "k8s-sidecar.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    pod = kinds["Pod"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"ad-server", "rampart"}
    rampart = containers["rampart"]
    port = rampart["ports"][0]
    assert rampart["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert rampart["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    args = rampart["args"]
    assert args[args.index("--port") + 1] == str(port["containerPort"])
    assert args[args.index("--host") + 1] == "0.0.0.0"  # the kubelet probes the pod IP
    state_dir = args[args.index("--state-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in rampart["volumeMounts"]}
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert mounts[state_dir] in volumes
    env = {e["name"]: e for e in rampart["env"]}
    secret = kinds["Secret"]
    for name in SECRETS:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    app = containers["ad-server"]["env"]
    assert any(e.get("value") == f"http://127.0.0.1:{port['containerPort']}" for e in app)


def test_examples_queries_name_metrics_rampart_exposes(server: Server) -> None:
    assert server.admin("start", {"version": "2"}).status_code == 200
    httpx.post(f"{server.url}/predict", json={"request_id": "x", "features": [[0, 0, 0, 0]]})
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    exposed = set(SYNTHETIC)
    for family in text_string_to_metric_families(text):
        exposed.add(family.name)
        exposed.update(s.name for s in family.samples)
        if family.type == "counter":
            exposed.add(f"{family.name}_total")  # the parser strips the suffix from the name
        if family.type == "histogram":
            exposed.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    queries = _queries()
    assert len(queries) > 20
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exposed, f"{expr!r} names {sorted(names - exposed)}, not in /metrics"
