"""guardrails/stats.py gathers the names of the statistics modules for the rest of the code; each
module's own behaviour is tested in the test file named after it."""

from __future__ import annotations

import pytest

from guardrails import (
    beta_comparison,
    beta_log_ratio,
    confidence_sequence,
    segment_degradation,
    stats,
)

MODULES = (beta_comparison, beta_log_ratio, confidence_sequence, segment_degradation)


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in stats.__all__])
def test_stats_name_is_its_modules_own(name: str) -> None:
    value = getattr(stats, name)
    assert any(vars(module).get(name) is value for module in MODULES)


def test_stats_exports_what_the_evaluator_and_benches_import() -> None:
    # guardrails/evidence.py, guardrails/comparison.py and bench/policy_kernel.py.
    used = {
        "BetaArm",
        "Comparison",
        "SequentialResult",
        "compare",
        "sequential_difference",
        "segment_degradation",
        "literal_worse",
        "EXACT_CUTOFF",
        "beta_compare_kernel",
        "log_ratio_cdf",
        "sequential_bound_kernel",
        "sequential_rho",
    }
    assert used <= set(stats.__all__)
