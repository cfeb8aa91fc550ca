"""The scenario models as shipped package data, and what a scenario needs to know about them.

`python -m bench.modelgen --demo` builds every variant into ``harness/models/<variant>.onnx``
(plus ``challenger.onnx``, the same model as ``challenger_better``, for `rampart demo`); the
package ships them, so scenarios run without onnx installed. Importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS: tuple[str, ...] = (
    "champion",
    "challenger_better",
    "broken_constant",
    "broken_nan",
    "broken_raise",
    "miscalibrated",
    "worse",
    "segment_regression",
)
# File names shipped besides the variants' own: `rampart demo` loads challenger.onnx.
ALIASES: dict[str, str] = {"challenger": "challenger_better"}
MODELS_DIR = Path(__file__).resolve().parent / "models"

# The device whose ranking segment_regression breaks.
REGRESSED_DEVICE = "tablet"
# broken_raise raises iff a row of the batch has this feature above the threshold.
RAISE_FEATURE = "user_sessions_7d_log"
RAISE_THRESHOLD = 3.0
# The worse model sees ad_relevance capped here (and no ad_historical_ctr): it cannot tell
# good ads from the best ones.
WORSE_RELEVANCE_CAP = -0.5


def model_path(variant: str) -> Path:
    """The shipped ONNX file of a scenario variant (or of an alias such as "challenger")."""
    if variant not in VARIANTS and variant not in ALIASES:
        raise ValueError(
            f"unknown model variant {variant!r}; the variants are {[*VARIANTS, *ALIASES]}"
        )
    path = MODELS_DIR / f"{variant}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m bench.modelgen --demo`")
    return path
