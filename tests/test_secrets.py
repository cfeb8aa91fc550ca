"""Secrets never leave the process: not in its output, /status, /metrics, /dashboard,
/openapi.json, the state directory or the rollout's event log.

A real `rampart serve` with known RAMPART_ADMIN_TOKEN, RAMPART_TOKEN_SECRET and
RAMPART_SLACK_WEBHOOK (a loopback receiver whose URL path carries the secret part, as
Slack's does), driven through a rollout to a rollback that fires an alert, with bad
admin requests on the way (wrong tokens, a non-UTF-8 body, a body over the limit) and a
failed first delivery of the alert.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from support.server import ADMIN_TOKEN, rampart, register_pair, serving
from support.webhook import Reply, webhook

TOKEN_SECRET = "tok-secret-4c1d9e07b2a84f35"
WEBHOOK_PART = "T0SECRET/B0SECRET/whk-secret-9f3e1a"


def _leaks(text: bytes, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value.encode() in text]


def test_secrets_appear_in_no_output_page_or_file(tmp_path: Path) -> None:
    state = register_pair(tmp_path / "state")
    log = tmp_path / "serve.log"
    with webhook() as hook:
        slack = f"{hook.url}/services/{WEBHOOK_PART}"
        secrets = {
            "RAMPART_ADMIN_TOKEN": ADMIN_TOKEN,
            "RAMPART_TOKEN_SECRET": TOKEN_SECRET,
            "RAMPART_SLACK_WEBHOOK": WEBHOOK_PART,
        }
        env = {"RAMPART_TOKEN_SECRET": TOKEN_SECRET, "RAMPART_SLACK_WEBHOOK": slack}
        with serving(state, env=env, log=log) as server:
            rollout = server.start_rollout("2")["rollout"]["id"]
            admin = f"{server.url}/admin/rollout"
            for headers, body in [
                ({"authorization": "Bearer wrong"}, b"{}"),
                ({"authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, b"{}"),
                ({"authorization": ADMIN_TOKEN}, b"{}"),
                ({"authorization": f"Bearer {ADMIN_TOKEN}"}, b"\xff\xfe"),
                ({"authorization": f"Bearer {ADMIN_TOKEN}"}, b"x" * 100_000),
            ]:
                r = httpx.post(f"{admin}/pause", content=body, headers=headers, timeout=10)
                assert r.status_code in (400, 401, 413), r.text
                assert not _leaks(r.content, secrets), r.text
            hook.replies.append(Reply(503))  # a failed first delivery is recorded, then retried
            assert server.admin("rollback").status_code == 200
            alerts = hook.wait_for(2)
            assert all(a.path.endswith(WEBHOOK_PART) for a in alerts)  # the secret URL in use
            pages = {
                path: httpx.get(f"{server.url}{path}", timeout=10).content
                for path in ("/status", "/metrics", "/dashboard", "/openapi.json")
            }
        report = rampart("report", rollout, "--state-dir", str(state))
        assert report.returncode == 0, report.stderr
    found = {path: _leaks(body, secrets) for path, body in pages.items()}
    found["serve output"] = _leaks(log.read_bytes(), secrets)
    found["report"] = _leaks(report.stdout.encode() + report.stderr.encode(), secrets)
    for f in sorted(state.rglob("*")):
        if f.is_file():
            found[str(f.relative_to(state))] = _leaks(f.read_bytes(), secrets)
    assert {where: names for where, names in found.items() if names} == {}
