"""`rampart scenario train` end to end (harness/session.py Session.train): a real `rampart serve`
driven by the simulator; two candidates queued at once; the evaluator starts the first by itself
and rolls it back, then starts the second by itself and promotes it. The local registry holds
both outcomes (the MLflow one is tests/router/test_mlflow_registry.py)."""

from __future__ import annotations

from harness.scenarios import SCENARIOS, TRAIN
from harness.session import run_scenario


def test_release_train_rolls_back_the_first_and_promotes_the_queued_second() -> None:
    verdict = run_scenario("train")
    first, second = verdict["legs"]
    for leg, name in zip((first, second), TRAIN, strict=True):
        expected = SCENARIOS[name]
        assert (leg["outcome"], leg["phase"]) == (expected.outcome, expected.phase), leg
        assert (leg["guardrail"] or "") in expected.guardrails, leg
    assert verdict["passed"]
    assert list(verdict["registry"].values()) == ["failed", "champion"]
