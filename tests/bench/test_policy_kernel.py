"""The simulations' policy kernel (bench/policy_kernel.py) against the production policy:
`checks.evaluate` + `policy.decide` on the same evidence, decision for decision."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from bench import policy_kernel as kernel
from bench.policy_kernel import LOOK, World
from guardrails import checks
from guardrails.policy import DAY, Action, Guards, Policy, State
from router.config import Config

WORLD = World.of(Config.from_dict({}))
LOOKS = 5_000  # random looks per policy

POLICIES = {
    "default": Policy(),
    "literal": Policy(early_rollback="literal"),
    # A demo-like rollout: hours are seconds-long, samples a hundredth, evidence minimums low.
    "scaled": Policy(
        time_scale=1 / 7200,
        sample_scale=0.01,
        guards=Guards(
            min_requests=20,
            min_latency_samples=20,
            min_ctr_impressions=500,
            min_predictions=50,
            min_srm_requests=100,
            min_calibration_clicks=20,
            min_bucket_clicks=5,
            min_segment_clicks=20,
        ),
    ),
    "strict": Policy(
        sequential_alpha=0.01,
        sequential_n_star=4e7,
        promote_after_days=9.5,
        guards=Guards(
            srm_p=0.05,
            min_clicks_per_10k=20.0,
            literal_p_worse=0.7,
            max_segment_degradation=0.02,
            segment_probability=0.6,
        ),
    ),
    # The literal rule only when nearly sure: a degraded segment is then seen first.
    "segments": Policy(
        early_rollback="literal",
        guards=Guards(literal_p_worse=0.9999, max_segment_degradation=0.01),
    ),
}


def random_looks(policy: Policy, n: int, seed: int) -> npt.NDArray[np.void]:
    """Evidence states of the simulated world, weighted towards the lines the policy draws:
    minimums reached exactly or just not, phase maximums, zero clicks, a broken split, and
    (a third of them) phases at judgement with CTR differences near the comparison lines."""
    rng = np.random.default_rng(seed)
    looks = np.zeros(n, dtype=LOOK)
    for look in looks:
        if rng.random() < 1 / 3:
            _judged_look(policy, rng, look)
        else:
            _any_look(policy, rng, look)
        look["paused"] = rng.random() < 0.08
    return looks


def _judged_look(policy: Policy, rng: np.random.Generator, look: np.void) -> None:
    """Phase 3 on, past its minimums, an honest split: ab_worse, segment_degradation, p_better
    and uplift decide."""
    phase = int(rng.integers(3, len(policy.phases) + 1))
    share = policy.phase(phase).split_bp / 10_000
    n_c = int(policy.min_impressions(phase) * rng.uniform(1, 3))
    n_b = int(n_c * (1 - share) / share * rng.uniform(0.8, 1.5))
    ctr = rng.uniform(0.003, 0.05)
    requests = int(rng.uniform(10_000, 10**6))
    min_s, max_s = policy.min_s(phase), policy.max_s(phase)
    t_phase = min_s if rng.random() < 0.5 else rng.uniform(min_s, max_s)
    look["phase"] = phase
    look["champion_impressions"], look["champion_clicks"] = n_b, rng.binomial(n_b, ctr)
    look["challenger_impressions"] = n_c
    look["challenger_clicks"] = rng.binomial(n_c, ctr * (1 + rng.uniform(-0.06, 0.06)))
    look["champion_phase_requests"] = requests - round(requests * share)
    look["challenger_phase_requests"] = round(requests * share)
    look["time_in_phase_s"] = t_phase
    look["total_s"] = policy.promote_after_s + rng.uniform(0, DAY)


def _any_look(policy: Policy, rng: np.random.Generator, look: np.void) -> None:
    g = policy.guards
    phase = int(rng.integers(1, len(policy.phases) + 1))
    share = policy.phase(phase).split_bp / 10_000
    minimums = [
        policy.min_impressions(phase),
        g.min_ctr_impressions,
        g.min_requests,
        g.min_predictions,
        g.min_latency_samples,
        g.min_segment_requests,
    ]
    kind = rng.random()
    if kind < 0.4:  # a rollout on course: around the phase's minimum sample
        n_c = int(policy.min_impressions(phase) * rng.uniform(0.5, 4))
    elif kind < 0.5:
        n_c = int(rng.integers(0, 3 * g.min_requests))
    elif kind < 0.65:
        n_c = int(rng.choice(minimums)) + int(rng.integers(-1, 2))
    else:
        n_c = int(np.exp(rng.uniform(np.log(10), np.log(5e7))))
    n_c = max(n_c, 0)
    n_b = int(n_c * (1 - share) / share * rng.uniform(0.3, 3)) if rng.random() > 0.03 else 0
    ctr = float(np.exp(rng.uniform(np.log(2e-4), np.log(0.1))))
    effect = rng.uniform(-0.04, 0.04) if rng.random() < 0.6 else rng.uniform(-0.3, 0.3)
    c_b = int(rng.binomial(n_b, ctr))
    c_c = int(rng.binomial(n_c, min(ctr * (1 + effect), 1.0)))
    zero = rng.random()
    if zero < 0.03:
        c_b = 0
    elif zero < 0.06:
        c_c = 0
    elif zero < 0.09:  # around the clicks-per-10k line
        c_c = min(n_c, int(n_c / 10_000 * g.min_clicks_per_10k * rng.uniform(0, 2)))
    requests = int(np.exp(rng.uniform(0, np.log(max(n_b + n_c, 2)))))
    if rng.random() < 0.1:
        requests = g.min_srm_requests + int(rng.integers(-1, 2))
    skew = 1.0 if rng.random() < 0.8 else rng.uniform(0.6, 1.4)
    req_c = int(rng.binomial(requests, min(share * skew, 1.0)))
    min_s, max_s = policy.min_s(phase), policy.max_s(phase)
    t_phase = float(
        rng.choice([0.0, min_s - 1, min_s, rng.uniform(min_s, max_s), max_s - 1, max_s, max_s + 60])
    )
    t_total = t_phase + sum(policy.min_s(k) for k in range(1, phase)) * rng.uniform(1, 1.3)
    if phase == len(policy.phases) and rng.random() < 0.7:
        t_total = policy.promote_after_s + float(rng.choice([-1.0, 0.0, 1.0, 3600.0]))
    look["phase"] = phase
    look["champion_impressions"], look["champion_clicks"] = n_b, c_b
    look["challenger_impressions"], look["challenger_clicks"] = n_c, c_c
    look["champion_phase_requests"] = requests - req_c
    look["challenger_phase_requests"] = req_c
    look["time_in_phase_s"] = max(t_phase, 0.0)
    look["total_s"] = max(t_total, 0.0)


def kernel_decisions(
    policy: Policy, looks: npt.NDArray[np.void]
) -> list[tuple[Action, str | None]]:
    actions, guardrails = kernel.decide_looks(
        kernel.phase_table(policy), kernel.rules(policy), looks
    )
    return [
        (kernel.ACTIONS[a], kernel.GUARDRAILS[g] or None)
        for a, g in zip(actions.tolist(), guardrails.tolist(), strict=True)
    ]


Compared = tuple[str, npt.NDArray[np.void], list[tuple[Action, str | None]]]


@pytest.fixture(scope="module", params=list(POLICIES), ids=list(POLICIES))
def compared(request: pytest.FixtureRequest) -> Compared:
    """A policy's name, its random looks, and the production decision on each."""
    name = request.param
    policy = POLICIES[name]
    looks = random_looks(policy, LOOKS, seed=list(POLICIES).index(name))
    return name, looks, [kernel.decide_reference(policy, look, WORLD) for look in looks]


def test_decide_kernel_agrees_with_evaluate_and_decide(compared: Compared) -> None:
    name, looks, reference = compared
    got = kernel_decisions(POLICIES[name], looks)
    mismatches = [
        (i, looks[i], want, have)
        for i, (want, have) in enumerate(zip(reference, got, strict=True))
        if want != have
    ]
    assert not mismatches, f"{len(mismatches)} of {len(looks)} differ, first: {mismatches[:3]}"


def test_random_looks_reach_every_decision(compared: Compared) -> None:
    """The agreement above is worth something only if the looks exercise every branch."""
    name, looks, reference = compared
    seen = Counter(reference)
    every = [
        (Action.HOLD, None),
        (Action.ADVANCE, None),
        (Action.PROMOTE, None),
        (Action.ROLLBACK, "sample_ratio"),
        (Action.ROLLBACK, "clicks_per_10k"),
        (Action.ROLLBACK, "ab_worse"),
        (Action.STOP, "max_duration"),
    ]
    if name in ("strict", "segments"):  # elsewhere ab_worse fires first, nearly always
        every.append((Action.STOP, "segment_degradation"))
    assert {d: seen[d] for d in every if seen[d] < 10} == {}, seen
    paused = [d for d, p in zip(reference, looks["paused"], strict=True) if p]
    assert len(paused) > 100 and set(paused) <= {
        (Action.HOLD, None),
        (Action.ROLLBACK, "sample_ratio"),
        (Action.ROLLBACK, "clicks_per_10k"),
        (Action.ROLLBACK, "ab_worse"),
        (Action.STOP, "segment_degradation"),
    }


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, id=n) for n in ("min_duration", "min_impressions", "total_duration")],
)
def test_decide_kernel_agrees_exactly_at_the_minimums(name: str) -> None:
    """A better challenger, every check passing but one minimum: 1 s or 1 impression short
    holds, exactly at the minimum advances (promotes in phase 5)."""
    p = Policy()
    for phase in range(1, 6):
        for short in (1.0, 0.0):
            look = np.zeros((), dtype=LOOK)[()]
            look["phase"] = phase
            look["champion_impressions"], look["champion_clicks"] = 4 * 10**6, 80_000
            look["challenger_impressions"] = p.min_impressions(phase) * 2
            look["challenger_clicks"] = p.min_impressions(phase) * 2 // 45
            look["champion_phase_requests"] = 10**6 - p.phase(phase).split_bp * 100
            look["challenger_phase_requests"] = p.phase(phase).split_bp * 100
            look["time_in_phase_s"] = p.min_s(phase)
            look["total_s"] = p.promote_after_s
            if name == "min_duration":
                look["time_in_phase_s"] -= short
            elif name == "min_impressions":
                look["challenger_impressions"] = p.min_impressions(phase) - short
                look["challenger_clicks"] = p.min_impressions(phase) // 45
            else:
                look["total_s"] -= short
            looks = np.array([look], dtype=LOOK)
            want = kernel.decide_reference(p, look, WORLD)
            assert kernel_decisions(p, looks) == [want]
            moves = Action.PROMOTE if phase == 5 else Action.ADVANCE
            shortfall_matters = name != "total_duration" or phase == 5
            assert want[0] == (Action.HOLD if short and shortfall_matters else moves), (
                phase,
                short,
            )


def test_world_evidence_is_healthy_but_for_the_simulated_checks() -> None:
    """In the world, only the checks the simulation varies can fail; the others pass once
    their samples are there."""
    p = Policy()
    look = np.zeros((), dtype=LOOK)[()]
    look["phase"] = 5
    look["champion_impressions"], look["champion_clicks"] = 4 * 10**6, 80_000
    look["challenger_impressions"], look["challenger_clicks"] = 2 * 10**6, 40_000  # equal CTR
    look["champion_phase_requests"] = look["challenger_phase_requests"] = 50_000
    look["time_in_phase_s"], look["total_s"] = p.min_s(5), 12 * DAY
    results = checks.evaluate(p, WORLD.evidence(p, look), 5)
    assert [r.name for r in results if r.state != State.PASS] == ["p_better", "uplift"]


def test_rules_refuses_a_policy_the_world_would_fail() -> None:
    with pytest.raises(ValueError, match="max_p99_ms"):
        kernel.rules(dataclasses.replace(Policy(), guards=Guards(max_p99_ms=0.5)))


def test_phase_table_and_rules_follow_the_policy() -> None:
    p = Policy(time_scale=0.5, sample_scale=0.1, early_rollback="literal")
    table, r = kernel.phase_table(p), kernel.rules(p)
    assert table["split_bp"].tolist() == [ph.split_bp for ph in p.phases]
    assert table["min_s"].tolist() == [p.min_s(n) for n in range(1, 6)]
    assert table["max_s"].tolist() == [p.max_s(n) for n in range(1, 6)]
    assert table["min_impressions"].tolist() == [p.min_impressions(n) for n in range(1, 6)]
    assert table["inconclusive_ok"].tolist() == [ph.inconclusive_ok for ph in p.phases]
    assert not r.sequential
    assert r.literal_p_worse == p.guards.literal_p_worse
    assert r.promote_after_s == p.promote_after_s
    assert r.min_srm_requests == p.guards.min_srm_requests
