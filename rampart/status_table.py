"""The rollout as a compact terminal table: `rampart status` and the demo's live view."""

from __future__ import annotations

from typing import Any

from guardrails.units import duration, number, percent

_STATE_COLOURS = {"pass": "32", "fail": "31;1", "waiting": "33"}


def _columns(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def status_text(s: dict[str, Any], colour: bool) -> str:
    """The top of the dashboard as a compact table: rollout, guardrails, next step, arms."""

    def paint(text: str, code: str | None) -> str:
        return f"\033[{code}m{text}\033[0m" if colour and code else text

    models = s.get("models") or {}
    label = {arm: (models.get(arm) or {}).get("label", "-") for arm in ("champion", "challenger")}
    r, last = s.get("rollout"), s.get("last_rollout")
    if r:
        lines = [f"rollout {r['id']}: {label['challenger']} vs {label['champion']}"]
    elif last:
        lines = [f"no rollout; last {last['id']} {last['outcome'] or last['state']}"]
        lines[0] += f": {last['reason']}" if last.get("reason") else ""
    else:
        lines = [f"no rollout; champion {label['champion']}"]
    numbered = [p for p in s.get("phases") or () if p.get("phase")]
    phase = "shadow" if r and s.get("phase_name") == "shadow" else f"{s['phase']}"
    head = [f"phase {phase}/{len(numbered) or 5}", str(s.get("state", "?"))]
    head.append(f"split {s['split_bp'] / 100:.1f}%")
    if r:
        head.append(
            f"in phase {duration(r.get('time_in_phase_s'))} "
            f"(min {duration(r.get('phase_min_s'))}, max {duration(r.get('phase_max_s'))})"
        )
    lines.append("  ".join(head))
    shadow = s.get("shadow")
    if r and shadow and shadow.get("active"):
        lines.append(
            f"shadow: {shadow['runs']} challenger runs on copies, {shadow['dropped']} dropped "
            f"(queue full); answers are the champion's"
        )
    if s.get("stale"):
        warning = "STALE: evaluator heartbeat lost, 100% of traffic to the champion"
        lines.append(paint(warning, "31;1"))
    fleet = s.get("fleet")
    if fleet:
        hosts = fleet.get("hosts") or []
        leader = fleet.get("leader") or "none"
        lines.append(
            f"fleet {fleet.get('name')}: {len(hosts)} hosts, leader {leader}, "
            f"answered by {fleet.get('host')}"
        )
        if fleet.get("store") != "ok":
            lines.append(
                paint("STORE UNREACHABLE: serving the last decision, nothing advances", "31;1")
            )
        if fleet.get("local_breach"):
            b = fleet["local_breach"]
            lines.append(paint(f"this host pulled the challenger: {b.get('guardrail')}", "31;1"))
    guardrails = s.get("guardrails") or []
    if guardrails:
        rows = [["GUARDRAIL", "VALUE", "THRESHOLD", "STATE"]]
        for g in guardrails:
            rows.append([g["name"], number(g.get("value")), str(g.get("threshold")), g["state"]])
        table = _columns(rows, right=(1,))
        lines += ["", table[0]]
        for row, g in zip(table[1:], guardrails, strict=True):
            # The state is the last column: painted after padding, so alignment holds.
            state = g["state"]
            lines.append(row[: -len(state)] + paint(state, _STATE_COLOURS.get(state)))
    if s.get("next"):
        lines += ["", f"next: {s['next']}"]
    rows = [["ARM", "MODEL", "REQUESTS", "ERRORS", "IMPRESSIONS", "CLICKS", "CTR"]]
    for arm in ("champion", "challenger"):
        a = (s.get("arms") or {}).get(arm) or {}
        counts = [int(a.get(k, 0)) for k in ("requests", "errors", "impressions", "clicks")]
        ctr = percent(counts[3] / counts[2], 3) if counts[2] else "-"
        rows.append([arm, label[arm], *map(str, counts), ctr])
    lines += ["", *_columns(rows, right=(2, 3, 4, 5, 6))]
    return "\n".join(lines)
