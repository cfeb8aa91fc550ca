"""The scenarios that disturb a rollout on the way: `restart-serve` (the whole `rampart serve`
restarted mid-rollout: the same rollout must go on) and `freeze-evaluator` (a hung evaluator,
alive with no heartbeat: workers fall back to the champion, the supervisor replaces it)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from harness.scenarios import Scenario
from harness.serve_process import Serve

if TYPE_CHECKING:
    from harness.session import Traffic, Watch


def disturb(s: Scenario, serve: Serve, watch: Watch, traffic: Traffic) -> dict[str, Any]:
    """Disturb the running rollout as `s.disturb` says, once the challenger has answered;
    what happened, for the verdict."""
    deadline = time.monotonic() + 120
    stats = traffic.live
    assert stats is not None
    served = stats.arms["challenger"].requests
    status = watch.until(lambda st: st.get("state") == "running", deadline)
    # The split is in force: the ad server has had answers from the challenger.
    while stats.arms["challenger"].requests == served:
        if time.monotonic() > deadline:
            raise TimeoutError("the challenger answered nothing in phase 1")
        time.sleep(0.05)
    before = status["rollout"]
    if s.disturb == "restart-serve":
        serve.stop()
        serve.start()
        serve.warm_up()
        serve.wait_for_evaluator()
        after = watch.until(lambda st: bool(st.get("rollout")), deadline)["rollout"]
        return {
            "restart": {
                "same_rollout": after["id"] == before["id"],
                "phase_before": before["phase"],
                "phase_after": after["phase"],
                "phase_started_kept": after["phase_started"] == before["phase_started"],
            }
        }
    # freeze-evaluator: a hung evaluator (alive, no heartbeat). Workers must fall back to
    # the champion within stale_after_s; the supervisor then replaces the hung process.
    pid = int(status["evaluator"]["pid"])
    os.kill(pid, signal.SIGSTOP)
    frozen, frozen_wall = time.monotonic(), time.time()
    stale = watch.until(lambda st: bool(st.get("stale")), deadline)
    stale_after = time.monotonic() - frozen
    resumed = watch.until(
        lambda st: not st.get("stale") and st.get("evaluator", {}).get("pid") != pid, deadline
    )
    resumed_wall = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    serve.admin("rollback")  # end the scenario; the verdict is about the fail-safe
    return {
        "freeze": {
            "frozen_at": frozen_wall,
            "resumed_at": resumed_wall,
            "stale_seen_s": round(stale_after, 2),
            "effective_split_during_stale": stale.get("effective_split_bp"),
            "resumed_phase": resumed.get("phase"),
            "phase_before": before["phase"],
            "same_rollout": (resumed.get("rollout") or {}).get("id") == before["id"],
        }
    }
