"""Statistics of the rollout controller: Bayesian A/B on CTR, per-segment degradation, and the
always-valid sequential bound used for continuous early rollback.

    compare(champion, challenger)        P(better), P(worse), expected relative uplift, interval
    segment_degradation(...)             P(relative drop > threshold) per segment value, vectorized
    sequential_difference(champion, ch)  Waudby-Smith asymptotic confidence sequence on p_c - p_b
    literal_worse(comparison)            the policy article's literal "P(worse) > 0.9" rule

One module per concept; this one gathers their names for the rest of the code:

    beta_comparison.py      BetaArm (mergeable counts), compare, literal_worse, the exact kernel
    beta_log_ratio.py       log(p_c/p_b): exact cumulants, skewness-corrected normal CDF, and the
                            third-order tails P(better) uses above the exact sum's cut-off
    segment_degradation.py  segment_degradation, SegmentResult
    confidence_sequence.py  sequential_difference, sequential_rho, SequentialResult

Pure (numpy, numba, math, statistics; scipy is only a test-time reference). The numba kernels are
scalar (`beta_compare_kernel`, `sequential_bound_kernel`, `log_ratio_cdf`), so the evaluator and
the Monte-Carlo benches (`bench/policy_kernel.py`, run by `bench/peeking_sim.py` and
`bench/policy_sim.py`) run the same arithmetic.
"""

from __future__ import annotations

from guardrails.beta_comparison import (
    EXACT_CUTOFF,
    BetaArm,
    Comparison,
    Method,
    beta_compare_kernel,
    compare,
    literal_worse,
)
from guardrails.beta_log_ratio import log_ratio_cdf
from guardrails.confidence_sequence import (
    DEFAULT_N_STAR,
    SequentialResult,
    sequential_bound_kernel,
    sequential_difference,
    sequential_rho,
)
from guardrails.segment_degradation import (
    DEFAULT_MIN_SEGMENT_CLICKS,
    SegmentResult,
    segment_degradation,
)

__all__ = [
    "DEFAULT_MIN_SEGMENT_CLICKS",
    "DEFAULT_N_STAR",
    "EXACT_CUTOFF",
    "BetaArm",
    "Comparison",
    "Method",
    "SegmentResult",
    "SequentialResult",
    "beta_compare_kernel",
    "compare",
    "literal_worse",
    "log_ratio_cdf",
    "segment_degradation",
    "sequential_bound_kernel",
    "sequential_difference",
    "sequential_rho",
]
