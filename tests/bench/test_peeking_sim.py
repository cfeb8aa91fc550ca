"""The peeking-problem Monte Carlo (bench/peeking_sim.py) on small runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import peeking_sim
from bench.peeking_sim import Setting
from guardrails.policy import Policy


@pytest.fixture(scope="module")
def rows() -> dict[float, peeking_sim.Row]:
    found = peeking_sim.run(Setting(days=1.0), runs=100, seed=2)
    return {row.relative_effect: row for row in found}


def test_setting_share_is_the_phase_split() -> None:
    assert Setting().share == Policy().phase(3).split_bp / 10_000
    assert Setting(phase=1).share == 0.03


def test_run_literal_rule_fires_on_an_equal_challenger(rows: dict[float, peeking_sim.Row]) -> None:
    equal = rows[0.0].rules
    assert equal["literal"].fired >= 0.4  # the peeking problem
    assert equal["sequential"].fired <= 0.1  # alpha 0.05 over every look, plus noise


def test_run_both_rules_catch_a_worse_challenger(rows: dict[float, peeking_sim.Row]) -> None:
    literal, sequential = rows[-0.05].rules["literal"], rows[-0.05].rules["sequential"]
    assert literal.fired == sequential.fired == 1.0
    assert sequential.median_hours is not None and literal.median_hours is not None
    assert literal.median_hours < sequential.median_hours < 3.0


def test_run_follows_the_policy_literal_threshold() -> None:
    strict = dataclasses.replace(
        Policy(), guards=dataclasses.replace(Policy().guards, literal_p_worse=0.999)
    )
    loose = peeking_sim.run(Setting(days=0.5), runs=60, seed=3)[2].rules
    tight = peeking_sim.run(Setting(days=0.5, policy=strict), runs=60, seed=3)[2].rules
    assert tight["literal"].fired < loose["literal"].fired
    assert tight["sequential"] == loose["sequential"]


def test_main_prints_markdown_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "peeking.json"
    assert peeking_sim.main(["--runs", "10", "--days", "0.2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Phase-3 setting: 250 impressions/s, challenger share 20%")
    assert "| challenger relative CTR | sequential fires | sequential median time | literal" in text
    assert "| +0% |" in text
    document = json.loads(out.read_text())
    assert document["setting"]["share"] == 0.2 and document["runs"] == 10
    assert [r["relative_effect"] for r in document["rows"]] == list(peeking_sim.RELATIVE_EFFECTS)
