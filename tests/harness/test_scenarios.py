"""Every rollout scenario end to end: a real `rampart serve`, the simulator's real HTTP traffic
and events, the production guardrails on a scaled clock. Each asserts its verdict: outcome,
phase and the guardrail named (harness/scenarios.py holds the expectations).

The scenarios share one server and one simulator (a rollout after another, as a team rolls
out model after model), which saves a server start per scenario. `promote` and
`broken-constant` run as the release train's two legs, queued at once and started by the
evaluator; the train runs after the scenarios its promotion would change the champion for;
the train's models come from a real MLflow registry (sqlite), whose tags show its outcomes;
scenarios with a server fault run last, so the server is restarted once, with their `[faults]`
config.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from guardrails.policy import Policy
from harness.scenario_models import VARIANTS
from harness.scenarios import SCENARIOS, TRAIN, server_config
from harness.session import Session
from router.config import Config

# The release train's legs (a broken candidate, then a good one queued behind it) are the
# `broken-constant` and `promote` scenarios, run by the evaluator from the queue: "train" takes
# their place. It promotes, so it runs after the scenarios it would change the champion for.
ORDER = sorted(
    [n for n in SCENARIOS if n not in TRAIN] + ["train"],
    key=lambda n: (n != "train" and SCENARIOS[n].challenger_delay_ms > 0, n == "train"),
)


@pytest.mark.parametrize(
    "delay_ms", [pytest.param(0.0, id="no-fault"), pytest.param(25.0, id="challenger-delay")]
)
def test_server_config_is_accepted_by_rampart_serve(delay_ms: float) -> None:
    config = Config.from_dict(tomllib.loads(server_config(delay_ms)))
    Policy.from_config(config)  # the [rollout], [phases] and [guardrails] sections
    assert config.faults.challenger_delay_ms == delay_ms
    assert config.serve.workers == 1 and config.bucket_width == 0.05


def test_slow_scenario_slows_an_ordinary_model_by_fault_injection() -> None:
    slow = SCENARIOS["slow"]
    assert slow.challenger in VARIANTS and slow.challenger_delay_ms > 0
    config = Config.from_dict(tomllib.loads(server_config(slow.challenger_delay_ms)))
    bound = Policy.from_config(config).guards.max_p99_ms
    # Over the p99 bound with margin on any CPU, and under the challenger timeout (a timeout
    # would count as an error, not as latency).
    assert 2 * bound <= slow.challenger_delay_ms < config.serve.challenger_timeout_ms
    assert slow.guardrails == ("latency_p99",) and slow.outcome == "rolled_back"


def test_a_check_that_stays_on_may_end_its_scenario_in_a_later_phase_only() -> None:
    segment = SCENARIOS["segment-regression"]
    assert [p for p in range(6) if segment.phase_expected(p)] == [4, 5]
    assert not segment.phase_expected(None)
    assert [p for p in range(6) if SCENARIOS["worse"].phase_expected(p)] == [3]


def test_session_imports_without_onnx() -> None:
    code = "import sys, harness.session; assert 'onnx' not in sys.modules, 'onnx imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    with Session(prefix="test-scenarios-") as s:
        yield s


def test_scenarios_cover_every_scenario_once() -> None:
    assert len(ORDER) == len(set(ORDER)) and set(ORDER) == (set(SCENARIOS) - set(TRAIN)) | {"train"}
    assert ORDER.index("train") == len(ORDER) - 2 and SCENARIOS[ORDER[-1]].challenger_delay_ms


def _train(session: Session) -> None:
    """Two candidates queued at once; the evaluator starts the first by itself and rolls it
    back, then starts the second by itself and promotes it; the registry holds both outcomes.
    It runs on a real MLflow registry (a sqlite store and an artifact directory): its outcomes
    are checked in MLflow's tags and aliases and in the local registry the server keeps its
    copies in, in the one run (a server restart, not a second 150 s train)."""
    session.switch_registry("mlflow")
    try:
        verdict = session.train(tuple(SCENARIOS[n] for n in TRAIN))
    except BaseException:
        # The scenarios after this one share the server and its state: a train that
        # failed midway must not leave them a rollout in progress.
        with contextlib.suppress(Exception):
            session.serve.admin("stop")
        raise
    first, second = verdict["legs"]
    for leg, name in zip((first, second), TRAIN, strict=True):
        expected = SCENARIOS[name]
        assert leg["outcome"] == expected.outcome and expected.phase_expected(leg["phase"]), leg
        assert (leg["guardrail"] or "") in expected.guardrails, leg
    assert verdict["passed"]
    assert list(verdict["registry"].values()) == ["failed", "champion"]
    # MLflow: A failed with the guardrail's reason, B promoted and @champion, @challenger gone.
    (_, tags_a), (b, tags_b) = verdict["mlflow"]["versions"].items()
    assert tags_a["rampart.status"] == "failed", tags_a
    assert tags_a["rampart.reason"].startswith(first["guardrail"]), tags_a
    assert tags_a["rampart.rollout_id"] == first["rollout"]
    assert (tags_b["rampart.status"], tags_b["rampart.rollout_id"]) == (
        "promoted",
        second["rollout"],
    )
    assert verdict["mlflow"]["aliases"] == {"champion": int(b)}


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in ORDER])
def test_scenario_ends_as_expected(session: Session, name: str) -> None:
    if name == "train":
        _train(session)
        return
    verdict = session.rollout(SCENARIOS[name])
    expected = SCENARIOS[name]
    assert verdict["outcome"] == expected.outcome, verdict
    assert expected.phase_expected(verdict["phase"]), verdict
    assert (verdict["guardrail"] or "") in expected.guardrails, verdict
    assert verdict["passed"]
    if expected.outcome == "rolled_back":
        assert verdict["detection_seconds"] is not None
        assert verdict["alert"] is not None  # delivered to the local Slack webhook
    if name == "evaluator-crash":
        freeze = verdict["freeze"]
        assert freeze["effective_split_during_stale"] == 0
        assert verdict["detection_seconds"] <= 5.0  # stale_after_s is 3 s
        # The replacement evaluator resumes the same rollout; its phase may have moved on,
        # since the phase clock kept running while the evaluator was down.
        assert freeze["same_rollout"] and freeze["resumed_phase"] >= freeze["phase_before"]
    if name == "restart":
        restart = verdict["restart"]
        assert restart["same_rollout"] and restart["phase_started_kept"]
        assert restart["phase_after"] == restart["phase_before"]
    if name == "slow":
        assert verdict["value"] > 10.0  # the challenger's p99 in ms, as the server measured it
