"""The rollout scenarios: which challenger each rolls out, how it must end, and the server
config they all run with.

Each scenario registers the shipped champion and one challenger variant in a fresh state
directory, starts `rampart serve` with `server_config` (production guardrail logic; only
durations and sample minimums scaled), drives it with the simulator, starts the rollout and
watches `/status` until the rollout ends (`harness.session`). The verdict says what happened
(`outcome`, `phase`, `guardrail`), how long detection took as the client saw it
(`detection_seconds`: from the challenger's first answer to the moment every answer comes from
the champion), and whether that is what the scenario expects (`harness.verdict`).

    rampart scenario broken-constant --json verdict.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from harness import ground_truth
from harness.serve_process import pin


@dataclass(frozen=True)
class Scenario:
    name: str
    challenger: str  # model variant (harness/scenario_models.py)
    outcome: str  # expected: promoted, rolled_back, stopped
    phase: int
    guardrails: tuple[str, ...]  # any of these may be the one named
    disturb: str = ""  # "freeze-evaluator" or "restart-serve"
    # Fault injection in the server ([faults] challenger_delay_ms): every challenger call takes
    # this much longer, whatever the CPU. 0: no fault.
    challenger_delay_ms: float = 0.0
    # The latest phase the outcome may come in, for a check that stays on in later phases
    # (0: only `phase`). Its evidence grows with the traffic, and a busy machine's simulator
    # sends less of it in the scaled phase time.
    last_phase: int = 0

    def phase_expected(self, phase: int | None) -> bool:
        return phase is not None and self.phase <= phase <= max(self.phase, self.last_phase)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("promote", "challenger_better", "promoted", 5, ("",)),
        Scenario(
            "broken-constant",
            "broken_constant",
            "rolled_back",
            1,
            ("paired_spread", "prediction_spread"),  # paired first, unless pairing is off
        ),
        Scenario("broken-nan", "broken_nan", "rolled_back", 1, ("predictions_in_range",)),
        Scenario("broken-raise", "broken_raise", "rolled_back", 1, ("error_rate",)),
        # The champion's own model, 25 ms slower per call: 2.5x the 10 ms p99 bound, half the
        # 50 ms challenger timeout (a timeout would be an error, not latency).
        Scenario("slow", "champion", "rolled_back", 1, ("latency_p99",), challenger_delay_ms=25.0),
        Scenario(
            "miscalibrated",
            "miscalibrated",
            "rolled_back",
            2,
            ("calibration", "calibration_buckets"),
        ),
        Scenario("worse", "worse", "rolled_back", 3, ("ab_worse",)),
        Scenario(
            "segment-regression",
            "segment_regression",
            "stopped",
            4,
            ("segment_degradation",),
            last_phase=5,  # segment degradation is judged in phase 4 and again in phase 5
        ),
        Scenario(
            "evaluator-crash",
            "challenger_better",
            "rolled_back",
            1,
            ("evaluator_heartbeat",),
            disturb="freeze-evaluator",
        ),
        Scenario(
            "restart",
            "miscalibrated",
            "rolled_back",
            2,
            ("calibration", "calibration_buckets"),
            disturb="restart-serve",
        ),
    )
}

# `rampart scenario train`: the release train. Both candidates are queued at once (as
# `rampart models register FILE --start` does); the evaluator starts the first by itself, rolls
# it back, then starts the second by itself and promotes it. Each leg is judged as its
# scenario is.
TRAIN = ("broken-constant", "promote")
SCENARIO_NAMES = (*SCENARIOS, "train")

# One config for every scenario and the demo. time_scale 1/7200: an hour of the policy is
# half a second, so the 12-day promotion takes 144 s. Evidence minimums are lowered to what
# ~2000 requests/s give in those seconds, and calibration buckets are 5% wide instead of 1%
# (a few hundred clicks cannot fill 1%-wide ones); the thresholds themselves are the defaults.
SCENARIO_CONFIG = """
[serve]
workers = 1
stale_after_s = 3.0
evaluator_cpu = {evaluator_cpu}

[segments]
publisher_category = {publishers}
device_type = {devices}
country_tier = {tiers}
creative_type = {creatives}

[calibration]
bucket_width = 0.05

[rollout]
time_scale = 0.000138889
sample_scale = 0.03
window_s = 10.0
journal_every_s = 1.0

# Each phase's maximum is three times its minimum (the policy's is 1.5-2x): a phase advances
# at its minimum when the evidence is there, and no scenario ends at a maximum, so this only
# gives a simulator slowed by a busy machine the policy hours its evidence takes (one that
# fell below ~420 requests/s stopped segment-regression at phase 2's maximum).
[phases.1]
max_hours = 72.0
[phases.2]
max_hours = 144.0
[phases.3]
max_hours = 216.0
[phases.4]
max_hours = 216.0
[phases.5]
max_hours = 144.0

[guardrails]
min_requests = 100
min_latency_samples = 100
min_ctr_impressions = 300
min_predictions = 300
min_srm_requests = 500
min_calibration_clicks = 60
min_bucket_clicks = 15
min_segment_clicks = 120
confidence = 0.99
"""


def server_config(challenger_delay_ms: float = 0.0) -> str:
    """`SCENARIO_CONFIG` for this machine, with a `[faults]` section when a fault is asked."""

    def toml_list(values: tuple[str, ...]) -> str:
        return json.dumps([v for v in values if v != "other"])

    text = SCENARIO_CONFIG.format(
        evaluator_cpu=1 if pin(0) else -1,
        publishers=toml_list(ground_truth.PUBLISHER_CATEGORIES),
        devices=toml_list(ground_truth.DEVICE_TYPES),
        tiers=toml_list(ground_truth.COUNTRY_TIERS),
        creatives=toml_list(ground_truth.CREATIVE_TYPES),
    )
    if challenger_delay_ms > 0:
        text += f"\n[faults]\nchallenger_delay_ms = {challenger_delay_ms}\n"
    return text
