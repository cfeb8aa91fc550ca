"""The footprint benchmark's measuring parts, on real processes (no server: the serve tree
is measured in tests/test_child.py's process test and by the benchmark itself)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.bench_footprint import measure_tree, pss_kb, summary_text
from bench.bench_predict_servers import process_tree


def test_measure_tree_counts_every_process_below_the_root() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert child.pid in process_tree(os.getpid())
        tree = measure_tree(os.getpid())
        pids = {p["pid"]: p for p in tree["processes"]}
        assert {os.getpid(), child.pid} <= set(pids)
        assert pids[os.getpid()]["role"] == "serve" and pids[child.pid]["role"] == "other"
        total_kb = sum(p["pss_kb"] for p in tree["processes"])
        assert tree["total_pss_mb"] == round(total_kb / 1024, 1)
        assert 0 < tree["total_private_mb"] <= tree["total_pss_mb"]
        assert sum(tree["by_role_pss_mb"].values()) > 0
    finally:
        child.kill()
        child.wait()


def test_pss_is_at_most_rss_and_private_at_most_pss() -> None:
    mem = pss_kb(os.getpid())
    assert 0 < mem["private_kb"] <= mem["pss_kb"] <= mem["rss_kb"]


def test_summary_text_names_each_role() -> None:
    report = {
        "rounds": 1,
        "rate_rps": 200.0,
        "load_seconds": 20.0,
        "idle_total_pss_mb": 150.0,
        "idle_by_role_pss_mb": {"evaluator": 50.0, "serve": 100.0},
        "idle_total_private_mb": 120.0,
        "load_total_pss_mb": 155.0,
        "load_by_role_pss_mb": {"evaluator": 50.0, "serve": 105.0},
        "load_peak_pss_mb": 156.0,
    }
    text = summary_text(report)
    assert "idle 150 (evaluator 50, serve 100; private 120)" in text and "peak 156" in text
