"""The evaluator benchmark in smoke mode: its report fields, its CLI, one real rollback.

No timing is asserted: these runs share the machine with everything else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import bench_evaluator
from bench.bench_evaluator import parse_args
from bench.evaluator_rollback import rollback_latency
from bench.evaluator_tick import STATS, TEN_K_SEGMENTS, tick_time
from router.config import Config


def _affinity() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def test_tick_time_reports_every_statistic_of_a_phase_four_rollout() -> None:
    before = _affinity()
    cpu = max(before) if before else None
    report = tick_time("default", ticks=3, warmup=1, cpu=cpu)
    assert _affinity() == before  # pinned for the run only
    assert report["cpu"] == cpu
    assert report["cells"] == 512 and report["workers"] == 4 and report["phase"] == 4
    assert report["ticks"] == 3
    assert report["cells_with_clicks_share"] == 1.0  # every cell of every slab has traffic
    for key in ("decision_ms", "full_tick_ms", "unread_tick_ms", "publish_ms", "snapshot_take_ms"):
        assert tuple(report[key]) == STATS
        assert all(v > 0 for v in report[key].values())
        assert report[key]["median"] <= report[key]["max"]
    # A read tick contains its publishing, tick by tick.
    assert report["full_tick_ms"]["median"] >= report["publish_ms"]["median"]
    assert report["target_ms"] == 2.0
    assert report["ratio_to_target"]["median"] == pytest.approx(
        report["decision_ms"]["median"] / 2.0, rel=1e-3
    )


def test_ten_k_space_has_ten_thousand_cells() -> None:
    config = Config.from_dict({"segments": TEN_K_SEGMENTS})
    assert config.segments.n_cells == 10_000


@pytest.mark.parametrize(
    ("argv", "ticks", "trials", "quick"),
    [
        pytest.param([], 300, 10, False, id="full"),
        pytest.param(["--quick"], 20, 1, True, id="quick"),
        pytest.param(["--quick", "--ticks", "7", "--trials", "2"], 7, 2, True, id="overridden"),
    ],
)
def test_parse_args_quick_is_a_smoke_run(
    argv: list[str], ticks: int, trials: int, quick: bool
) -> None:
    args = parse_args(argv)
    assert (args.ticks, args.trials, args.quick) == (ticks, trials, quick)
    assert args.out == "bench/results/evaluator.json"


def test_main_quick_tick_only_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluator.json"
    argv = ["--quick", "--only", "tick", "--ticks", "2", "--out", str(out)]
    assert bench_evaluator.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and "rollback" not in report
    assert [t["cells"] for t in report["tick"]] == [512, 10_000]
    text = capsys.readouterr().out
    assert "SMOKE MODE" in text and "10000 cells" in text


def test_rollback_trial_against_a_real_server() -> None:
    before = _affinity()
    report = rollback_latency(trials=1, warmup_trials=0, healthy_s=1.0, timeout_s=5.0)
    assert _affinity() == before
    assert report["valid_trials"] == 1, report["runs"]
    run = report["runs"][0]
    assert run["outcome"] == "rolled_back" and run["guardrail"] == "predictions_in_range"
    assert run["challenger_answers_before_trigger"] > 0  # phase 1 was serving the challenger
    assert run["latency_ms"] > 0 and run["answers_not_clean"] > 0
    assert report["latency_ms"]["median"] == run["latency_ms"]
