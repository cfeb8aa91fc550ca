"""The operator's page: served assets, and the page in a real headless Chromium.

The browser is Debian's `chromium` driven by Playwright for Python through
`executable_path` (Playwright's own browser download is not reachable from CI);
`.ci/run` installs the package. Screenshots go to `test-artifacts/` at the repo root.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.server import STATE_S, Server, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ROW = [0.5, 1.0, -0.5, 2.0]
BROWSERS = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def chromium_path() -> str | None:
    configured = os.environ.get("RAMPART_CHROMIUM")
    if configured:
        return configured
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # test output, never committed
    return ARTIFACTS / name


# -- served without a browser -------------------------------------------------------------------
def test_dashboard_serves_page_and_assets_with_types_and_cache(server: Server) -> None:
    page = httpx.get(f"{server.url}/dashboard", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    again = httpx.get(
        f"{server.url}/dashboard", headers={"if-none-match": page.headers["etag"]}, timeout=5
    )
    assert again.status_code == 304
    assets = dict(re.findall(r'"(dashboard/static/[\w.-]+\.(js|css))\?v=\w+"', page.text))
    assert set(assets.values()) == {"js", "css"}
    types = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
    for url in re.findall(r'"(dashboard/static/[^"]+)"', page.text):
        r = httpx.get(f"{server.url}/{url}", timeout=5)
        assert r.status_code == 200 and r.content
        assert r.headers["content-type"] == types[url.split("?")[0].rsplit(".", 1)[1]]
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert httpx.head(f"{server.url}/{url}", timeout=5).status_code == 200
        # Without the current version in the URL the browser must revalidate.
        bare = httpx.get(f"{server.url}/{url.split('?')[0]}", timeout=5)
        assert bare.headers["cache-control"] == "no-cache"
    for missing in ("nope.js", "..%2Fapp.py", "dashboard.html"):
        assert httpx.get(f"{server.url}/dashboard/static/{missing}", timeout=5).status_code == 404


# -- in the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (a test dependency) is not installed"
    )
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium found: install Debian's `chromium` (apt-get install chromium, "
            "as .ci/run does) or point RAMPART_CHROMIUM at a Chrome/Chromium binary"
        )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=["--disable-dev-shm-usage"])
        yield b
        b.close()


class Dashboard:
    """One open page, with every console error and off-server request it caused."""

    def __init__(self, browser: Any, server: Server, width: int = 1366, height: int = 900):
        self.server = server
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("request", self._request)

    def _request(self, request: Any) -> None:
        url = request.url
        if not url.startswith((self.server.url, "data:")):
            self.foreign.append(url)

    def open(self) -> Dashboard:
        self.page.goto(f"{self.server.url}/dashboard")
        self._wait_until_polls(1)
        return self

    def polls(self) -> int:
        return int(self.page.get_by_test_id("updated").get_attribute("data-polls"))

    def wait_for_polls(self, n: int) -> None:
        """Wait for `n` more polls: the last of them fetched a document sent after this call."""
        self._wait_until_polls(self.polls() + n)

    def _wait_until_polls(self, total: int) -> None:
        self.page.wait_for_function(
            # A function, not an expression: the page's CSP forbids eval of strings.
            "(n) => +document.querySelector('[data-testid=updated]').dataset.polls >= n",
            arg=total,
            timeout=10_000,
        )

    def read(self) -> dict[str, Any]:
        """What the page shows, read in one go."""
        return dict(
            self.page.evaluate(
                """() => {
                const q = (id) => document.querySelector(`[data-testid="${id}"]`);
                const all = (id) => [...document.querySelectorAll(`[data-testid="${id}"]`)];
                return {
                  phase: q("phase").dataset.value, state: q("state").dataset.value,
                  split: q("split").dataset.value, splitText: q("split").textContent,
                  next: q("next").textContent, stale: !q("stale-banner").hidden,
                  lastRollout: q("last-rollout").textContent,
                  offline: !q("offline-banner").hidden,
                  steps: all("phase-step").map((li) => li.dataset.result),
                  guardrails: all("guardrail-row").map((r) => [r.dataset.name, r.dataset.state,
                    r.querySelector('[data-testid="guardrail-state"]').textContent,
                    r.querySelector('[data-testid="guardrail-threshold"]').textContent]),
                  noGuardrails: !!q("guardrails-empty"),
                  events: all("event-row").map((r) => [r.dataset.kind, r.textContent]),
                  segments: all("segment-row").length,
                  dots: all("calibration-dot").map((d) => d.dataset.arm),
                  lines: [...q("ctr-chart").querySelectorAll("path[data-series]")]
                    .map((p) => p.dataset.series),
                  overflow: document.documentElement.scrollWidth - window.innerWidth,
                };
            }"""
            )
        )

    def close(self) -> None:
        self.page.close()
        assert not self.errors, f"the page logged errors: {self.errors}"
        assert not self.foreign, f"the page reached beyond Rampart: {self.foreign}"


def mismatch(shown: dict[str, Any], status: dict[str, Any]) -> str | None:
    """How the page differs from a /status document, or None."""
    shadow = status.get("phase_name") == "shadow"
    want: dict[str, Any] = {
        "phase": "shadow" if shadow else str(status["phase"]),
        "split": str(status["split_bp"]),
        "splitText": f"{status['split_bp'] / 100:.2f}%",
        "stale": bool(status.get("stale")),
        "guardrails": [
            [g["name"], g["state"], g["state"], g.get("threshold") or ""]
            for g in status.get("guardrails") or []
        ],
        "noGuardrails": not status.get("guardrails"),
    }
    if status.get("state"):
        want["state"] = status["state"]
    if status.get("next"):
        want["next"] = status["next"]
    if status.get("phases"):
        want["steps"] = [p["result"] for p in status["phases"]]
    got = {k: shown[k] for k in want}
    return None if got == want else f"page {got} != /status {want}"


def _traffic(server: Server, n: int) -> None:
    """Predictions with impressions and about one click in seven, so every chart has data."""
    with httpx.Client(timeout=10) as client:
        for i in range(n):
            a = client.post(
                f"{server.url}/predict", json={"request_id": f"d{i}", "features": [ROW]}
            ).json()
            p = a["predictions"][0]
            events = [{"token": a["token"], "type": "impression", "prediction": p}]
            if i % 7 == 0:
                events.append({"token": a["token"], "type": "click", "prediction": p})
            client.post(f"{server.url}/events", json={"events": events})


def _page_matches_status(dash: Dashboard) -> bool:
    problem = mismatch(dash.read(), dash.server.status())
    assert problem is None, problem  # wait_for polls again, and reports the last mismatch
    return True


def test_dashboard_follows_the_rollout_and_its_rollback(browser: Any, server: Server) -> None:
    server.start_rollout("2")
    _traffic(server, 600)
    dash = Dashboard(browser, server).open()
    # The page renders what /status says (compared, not assumed), within a few polls.
    wait_for(lambda: _page_matches_status(dash), STATE_S, "page vs /status")
    shown = dash.read()
    assert shown["split"] == "300" and shown["splitText"] == "3.00%"
    paired = {"paired_spread", "paired_correlation", "paired_mean_ratio"}
    assert paired <= {name for name, *_ in shown["guardrails"]}
    assert (
        shown["lines"] == ["champion", "challenger"]
        or server.status()["arms"]["challenger"]["impressions"] == 0
    )
    dash.page.screenshot(path=str(artifact("dashboard.png")), full_page=True)

    # Phone width: no sideways scrolling, and still the same picture.
    dash.page.set_viewport_size({"width": 390, "height": 844})
    dash.wait_for_polls(1)
    assert dash.read()["overflow"] <= 0
    dash.page.screenshot(path=str(artifact("dashboard-phone.png")), full_page=True)
    dash.page.set_viewport_size({"width": 1366, "height": 900})

    rollback = server.admin("rollback")
    assert rollback.status_code == 200, rollback.text
    # Shown on the page's next poll, without a reload. Polls run one after another, so of
    # the next two the second fetched /status after the rollback was answered.
    dash.wait_for_polls(2)
    assert dash.read()["split"] == "0"
    wait_for(lambda: _page_matches_status(dash), STATE_S, "page vs /status after the rollback")
    status = server.status()
    kinds = [e["kind"] for e in status.get("events") or []]
    shown = dash.read()
    if "rolled_back" in kinds:
        assert "rolled_back" in [kind for kind, _ in shown["events"]]
    if (status.get("last_rollout") or {}).get("state") == "rolled_back":
        assert shown["lastRollout"].startswith("last rollout rolled back")
    assert dash.read()["splitText"] == "0.00%"
    dash.page.screenshot(path=str(artifact("dashboard-rolled-back.png")), full_page=True)
    dash.close()


# -- every section, from a complete status document --------------------------------------------
def full_status(now: float) -> dict[str, Any]:
    """A phase-3 rollout as the evaluator describes it, every field of the schema filled."""
    start = now - 3 * 3600
    phases = [
        (1, 300, 86400, 172800, 10_000),
        (2, 1000, 172800, 259200, 50_000),
        (3, 2000, 259200, 432000, 200_000),
        (4, 4000, 259200, 432000, 500_000),
        (5, 5000, 172800, 259200, 1_000_000),
    ]
    series = []
    for i in range(300):
        t = start + i * 36
        phase = 1 if i < 100 else 2 if i < 200 else 3
        n = 2_000 + i * 400
        row: dict[str, Any] = {"t": t, "phase": phase, "split_bp": phases[phase - 1][1]}
        for arm, ctr in (("champion", 0.0200), ("challenger", 0.0206)):
            c = ctr + 0.002 * math.sin(i / 17) * math.exp(-i / 120)
            half = 1.96 * math.sqrt(c * (1 - c) / (n if arm == "champion" else n / 8))
            row[arm] = {"impressions": n, "clicks": int(n * c), "ctr": c}
            row[arm] |= {"ctr_low": c - half, "ctr_high": c + half}
        row["p_better"] = 0.5 + 0.25 * (1 - math.exp(-i / 90))
        series.append(row)
    buckets = []
    for k in range(7):
        lo, hi = k / 100, (k + 1) / 100
        entry: dict[str, Any] = {"lo": lo, "hi": hi}
        for arm, bias in (("champion", 1.0), ("challenger", 1.08 if k != 5 else 1.6)):
            impressions = int(90_000 * math.exp(-((k - 2) ** 2) / 3)) + 500
            predicted = impressions * (lo + hi) / 2
            clicks = int(predicted / bias)
            ratio = predicted / clicks
            entry[arm] = {"impressions": impressions, "clicks": clicks}
            entry[arm] |= {"predicted": predicted, "ratio": ratio}
        buckets.append(entry)

    def guard(name: str, value: Any, threshold: str, state: str, phase: int, detail: str) -> Any:
        return dict(
            name=name, value=value, threshold=threshold, state=state, phase=phase, detail=detail
        )

    return {
        "phase": 3,
        "state": "running",
        "split_bp": 2000,
        "effective_split_bp": 2000,
        "stale": False,
        "workers": 2,
        "models": {
            "champion": {"version": "7", "label": "ctr-mlp:7", "features": ["f0"]},
            "challenger": {"version": "8", "label": "ctr-mlp:8", "features": ["f0"]},
        },
        "arms": {
            "champion": dict(
                requests=4_210_000,
                predictions=21_050_000,
                errors=12,
                fallbacks=0,
                impressions=3_900_000,
                clicks=78_100,
            ),
            "challenger": dict(
                requests=620_000,
                predictions=3_100_000,
                errors=3,
                fallbacks=3,
                impressions=571_000,
                clicks=11_790,
            ),
        },
        "rollout": {
            "id": "r20250601-v8",
            "challenger": "8",
            "champion": "7",
            "phase": 3,
            "started": start,
            "phase_started": now - 3600,
            "time_in_phase_s": 3600.0,
            "phase_min_s": 259200,
            "phase_max_s": 432000,
            "paused": False,
            "time_scale": 120.0,
        },
        "phases": [
            {
                "phase": p,
                "split_bp": bp,
                "min_s": lo,
                "max_s": hi,
                "min_impressions": mi,
                "entered": start + (p - 1) * 3600 if p <= 3 else None,
                "exited": start + p * 3600 if p < 3 else None,
                "result": "passed" if p < 3 else "current" if p == 3 else "pending",
            }
            for p, bp, lo, hi, mi in phases
        ],
        "guardrails": [
            guard("error_rate", 0.0000048, "< 0.1%", "pass", 1, "3 errors in 620,000 requests"),
            guard("latency_p99", 1.84, "< 10 ms", "pass", 1, "challenger p99"),
            guard("calibration", 1.07, "0.85–1.15", "pass", 2, "predicted / actual clicks"),
            guard("calibration_buckets", 1.6, "0.7–1.4", "fail", 2, "bucket 5–6% is at 1.60"),
            guard("p_worse_sequential", 0.03, "upper < 0", "pass", 3, "always-valid bound"),
            guard("p_better", 0.74, "> 0.6 or inconclusive", "waiting", 3, "judged at 72 h"),
            guard("min_impressions", 571_000, ">= 200,000", "pass", 3, "challenger impressions"),
        ],
        "next": "advance to phase 4 (40%) when: min_duration >= 259200 s (now 3600)",
        "comparison": {
            "p_better": 0.74,
            "p_worse": 0.26,
            "uplift": 0.021,
            "uplift_low": -0.011,
            "uplift_high": 0.052,
            "method": "exact",
            "sequential": {"estimate": 0.021, "lower": -0.03, "upper": 0.07},
        },
        "series": series,
        "calibration": {"bucket_width": 0.01, "band": [0.7, 1.4], "buckets": buckets},
        "latency": {
            "champion": dict(p50_ms=0.41, p99_ms=1.62, p999_ms=3.9, max_ms=11.2, count=4_210_000),
            "challenger": dict(p50_ms=0.44, p99_ms=1.84, p999_ms=4.4, max_ms=9.7, count=620_000),
        },
        "segments": [
            dict(
                dimension=d,
                value=v,
                champion_ctr=c,
                challenger_ctr=c * (1 + ch),
                change=ch,
                p_degraded=pd,
                enough=True,
            )
            for d, v, c, ch, pd in (
                ("publisher_category", "news", 0.021, 0.031, 0.08),
                ("publisher_category", "gaming", 0.027, -0.062, 0.81),
                ("device_type", "mobile", 0.019, 0.012, 0.22),
                ("device_type", "desktop", 0.024, 0.04, 0.05),
                ("country_tier", "tier1", 0.025, 0.018, 0.15),
                ("creative_type", "video", 0.031, -0.008, 0.41),
            )
        ],
        "events": [
            {"t": start, "kind": "started", "phase": 1, "detail": "rollout of ctr-mlp:8 at 3%"},
            {"t": start + 3600, "kind": "advanced", "phase": 2, "detail": "phase 1 passed"},
            {"t": start + 7200, "kind": "advanced", "phase": 3, "detail": "phase 2 passed"},
        ],
        "counters": {"rollbacks": 2, "promotions": 5, "stops": 0},
    }


def rolled_back(status: dict[str, Any], now: float) -> dict[str, Any]:
    """The same rollout one tick after a guardrail broke."""
    out = dict(status, phase=0, state="rolled_back", split_bp=0, effective_split_bp=0)
    out["rollout"] = None
    out["phases"] = [
        dict(p, result="failed" if p["result"] == "current" else p["result"])
        for p in status["phases"]
    ]
    out["events"] = [
        *status["events"],
        {
            "t": now,
            "kind": "rolled_back",
            "phase": 3,
            "detail": "P(challenger worse) crossed the sequential bound",
            "guardrail": "p_worse_sequential",
            "value": 0.93,
            "threshold": 0.9,
        },
    ]
    out["counters"] = dict(status["counters"], rollbacks=3)
    return out


def test_dashboard_renders_every_section_of_a_full_status(browser: Any, server: Server) -> None:
    import json

    now = time.time()
    document = {"status": full_status(now)}
    dash = Dashboard(browser, server)
    dash.page.route(
        "**/status",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(document["status"])
        ),
    )
    dash.open()
    dash.wait_for_polls(1)
    shown = dash.read()
    assert mismatch(shown, document["status"]) is None
    assert shown["steps"] == ["passed", "passed", "current", "pending", "pending"]
    assert shown["lines"] == ["champion", "challenger"]
    assert sorted(set(shown["dots"])) == ["challenger", "champion"]
    assert len(shown["dots"]) == 2 * len(document["status"]["calibration"]["buckets"])
    assert shown["segments"] == len(document["status"]["segments"])
    assert [k for k, _ in shown["events"]] == ["advanced", "advanced", "started"]  # newest first
    assert dash.page.get_by_test_id("latency-challenger").inner_text().split()[1:3] == [
        "0.44",
        "1.84",
    ]
    assert dash.page.locator(".row-fail[data-name=calibration_buckets]").count() == 1
    dash.page.screenshot(path=str(artifact("dashboard-full.png")), full_page=True)

    # One tick later a guardrail breaks: the page shows the rollback and its reason.
    document["status"] = rolled_back(document["status"], now + 5)
    dash.wait_for_polls(2)
    shown = dash.read()
    assert mismatch(shown, document["status"]) is None
    assert shown["steps"][2] == "failed"
    kind, text = shown["events"][0]
    assert kind == "rolled_back" and "p_worse_sequential = 0.93 (threshold 0.9)" in text

    # The evaluator stops: the stale banner; the server goes away: the offline banner.
    document["status"] = dict(document["status"], stale=True)
    dash.wait_for_polls(2)
    assert dash.read()["stale"]
    dash.page.unroute("**/status")
    dash.page.route("**/status", lambda route: route.abort())
    dash.wait_for_polls(2)
    assert dash.read()["offline"]
    dash.errors = [e for e in dash.errors if "ERR_FAILED" not in e]  # the aborted polls
    dash.close()


def test_dashboard_shows_the_fleet_and_an_unreachable_store(browser: Any, server: Server) -> None:
    import json

    now = time.time()
    fleet = {
        "name": "ads",
        "leader": "pod-2",
        "hosts": [
            {"id": "pod-1", "age_s": 0.4, "split_bp": 300},
            {"id": "pod-2", "age_s": 0.1, "split_bp": 300},
            {"id": "pod-3", "age_s": 0.7, "split_bp": 0},
        ],
        "store": "ok",
        "unreachable_since": None,
        "host": "pod-3",
        "local_breach": {"rollout": "r1", "guardrail": "predictions_in_range", "at": now},
    }
    document = {"status": dict(full_status(now), fleet=fleet)}
    dash = Dashboard(browser, server)
    dash.page.route(
        "**/status",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(document["status"])
        ),
    )
    dash.open()
    dash.wait_for_polls(1)
    card = dash.page.get_by_test_id("fleet-card")
    assert card.is_visible()
    summary = dash.page.get_by_test_id("fleet-summary").inner_text()
    assert "3 hosts" in summary and "leader pod-2" in summary and "answered by pod-3" in summary
    assert "pulled the challenger: predictions_in_range" in summary
    rows = dash.page.locator("[data-testid=fleet-hosts] tbody tr")
    assert rows.count() == 3
    assert rows.nth(1).inner_text().split("\t")[:2] == ["pod-2", "leader"]
    assert not dash.page.get_by_test_id("store-banner").is_visible()

    # The store stops answering: a banner says since when, and that nothing advances.
    document["status"] = dict(
        document["status"], fleet=dict(fleet, store="unreachable", unreachable_since=now)
    )
    dash.wait_for_polls(2)
    banner = dash.page.get_by_test_id("store-banner")
    assert banner.is_visible() and "Fleet store unreachable since" in banner.inner_text()
    dash.page.screenshot(path=str(artifact("dashboard-fleet.png")), full_page=True)

    # Single-host mode: no fleet card at all.
    document["status"] = full_status(now)
    dash.wait_for_polls(2)
    assert not card.is_visible()
    assert dash.errors == [] and dash.foreign == []
    dash.close()


def test_dashboard_names_the_shadow_phase(browser: Any, server: Server) -> None:
    import json

    now = time.time()
    status = full_status(now)
    shadow_step = {"phase": 0, "name": "shadow", "split_bp": 0, "min_s": 3600.0}
    shadow_step |= {"max_s": 86400.0, "min_impressions": 0, "entered": now - 60}
    shadow_step |= {"exited": None, "result": "current"}
    later = [
        dict(p, name=str(p["phase"]), entered=None, result="pending") for p in status["phases"]
    ]
    status |= {"phase": 0, "phase_name": "shadow", "split_bp": 0, "phases": [shadow_step, *later]}
    status["rollout"] |= {"phase": 0, "time_in_phase_s": 60.0}
    dash = Dashboard(browser, server)
    dash.page.route(
        "**/status",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(status)
        ),
    )
    dash.open()
    dash.wait_for_polls(1)
    shown = dash.read()
    assert mismatch(shown, status) is None
    assert shown["phase"] == "shadow" and shown["steps"][:2] == ["current", "pending"]
    first = dash.page.get_by_test_id("phase-step").first.inner_text()
    assert first.startswith("Shadow") and "copies" in first
    dash.close()
