"""Per-segment degradation: for each segment value, P(p_c/p_b < 1 - threshold), vectorized over
the values, and whether both arms have clicks enough to tell.

The probability is the normal approximation of log(p_c/p_b) that `compare` uses above its exact
cut-off (`guardrails.beta_log_ratio.log_ratio_cdf`), run by the numba kernel `_segment_kernel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from guardrails.beta_comparison import check_prior
from guardrails.beta_log_ratio import log_ratio_cdf

# Below this many clicks per arm the posterior sd of log(p_c/p_b) is above sqrt(2/200) = 0.1, twice
# the default 5% threshold: such a segment can neither pass nor fail, it is waiting.
DEFAULT_MIN_SEGMENT_CLICKS = 200


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """Per segment value: observed p_c/p_b - 1, P(p_c/p_b < 1 - threshold), enough-data mask."""

    change: npt.NDArray[np.float64]
    p_degraded: npt.NDArray[np.float64]
    enough: npt.NDArray[np.bool_]
    threshold: float
    min_clicks: int

    def failing(self, probability: float = 0.9) -> npt.NDArray[np.bool_]:
        """Segments with enough data whose degradation beyond the threshold is that probable."""
        return self.enough & (self.p_degraded > probability)


@njit(cache=True)
def _segment_kernel(
    n1: npt.NDArray[np.float64],
    c1: npt.NDArray[np.float64],
    n2: npt.NDArray[np.float64],
    c2: npt.NDArray[np.float64],
    log_floor: float,
    min_clicks: float,
    prior_a: float,
    prior_b: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    k = n1.shape[0]
    change = np.zeros(k)
    p_degraded = np.zeros(k)
    enough = np.zeros(k, dtype=np.bool_)
    for i in range(k):
        valid = 0 <= c1[i] <= n1[i] and 0 <= c2[i] <= n2[i]
        if not valid or n1[i] == 0 or n2[i] == 0:
            continue
        if c1[i] > 0:
            change[i] = (c2[i] / n2[i]) / (c1[i] / n1[i]) - 1.0
        enough[i] = c1[i] >= min_clicks and c2[i] >= min_clicks
        below, _ = log_ratio_cdf(
            prior_a + c1[i],
            prior_b + n1[i] - c1[i],
            prior_a + c2[i],
            prior_b + n2[i] - c2[i],
            log_floor,
        )
        p_degraded[i] = below
    return change, p_degraded, enough


def segment_degradation(
    champion_impr: npt.ArrayLike,
    champion_clicks: npt.ArrayLike,
    challenger_impr: npt.ArrayLike,
    challenger_clicks: npt.ArrayLike,
    threshold: float = 0.05,
    min_clicks: int = DEFAULT_MIN_SEGMENT_CLICKS,
    *,
    prior: tuple[float, float] = (1.0, 1.0),
) -> SegmentResult:
    """Per segment value: observed p_c/p_b - 1, P(p_c/p_b < 1 - threshold) from the normal
    approximation of log(p_c/p_b) (as in compare), and whether both arms have min_clicks clicks.

    Segments with no impressions or invalid counts get change 0, probability 0, enough False.
    """
    check_prior(prior)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    n1, c1, n2, c2 = (
        np.ascontiguousarray(a, dtype=np.float64)
        for a in (champion_impr, champion_clicks, challenger_impr, challenger_clicks)
    )
    shapes = {n1.shape, c1.shape, n2.shape, c2.shape}
    if len(shapes) != 1 or n1.ndim != 1:
        raise ValueError(f"segment arrays must be 1-D and of one length, got shapes {shapes}")
    change, p_degraded, enough = _segment_kernel(
        n1, c1, n2, c2, math.log1p(-threshold), float(min_clicks), float(prior[0]), float(prior[1])
    )
    return SegmentResult(change, p_degraded, enough, threshold, min_clicks)
