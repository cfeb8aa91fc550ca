"""The worker side of paired scoring (router.paired): the sums kernel against NumPy, and which
challenger requests get paired (sampling, the rate cap, a change of split)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import layout, rate_cap
from router.config import Config, ConfigError, PairedConfig
from router.layout import Counter
from router.paired import Pairing, pair_sums_reference, record_pairs


class Slot:
    """A scratch slot record, written through its address as a worker's slab is."""

    def __init__(self) -> None:
        self.record = np.zeros(1, layout.slot_dtype(4, 4))
        self.addr = self.record.ctypes.data

    @property
    def sums(self) -> np.ndarray:
        return np.asarray(self.record["paired"][0])

    def counter(self, which: Counter) -> int:
        return int(self.record["counters"][0][which])


class Champion:
    def __init__(self, out: Any = None) -> None:
        self.out = out
        self.runs = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.runs += 1
        if isinstance(self.out, Exception):
            raise self.out
        return x[:, :1] if self.out is None else self.out


probability = st.floats(0.0, 1.0, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(probability, probability), min_size=1, max_size=8), max_size=20))
def test_record_pairs_adds_what_numpy_sums(requests: list[list[tuple[float, float]]]) -> None:
    slot = Slot()
    want = np.zeros(layout.N_PAIRED)
    for rows in requests:
        b = np.array([[r[0]] for r in rows], np.float32)  # [N, 1], as a model answers
        c = np.array([r[1] for r in rows], np.float32)  # [N]
        assert record_pairs(slot.addr, b, c) == 0
        want += pair_sums_reference(b, c)
    np.testing.assert_allclose(slot.sums, want, rtol=1e-12)


@pytest.mark.parametrize(
    "champion",
    [
        pytest.param(np.array([[0.1], [np.nan]], np.float32), id="nan"),
        pytest.param(np.array([[0.1], [1.5]], np.float32), id="out-of-range"),
        pytest.param(np.array([[0.1]], np.float32), id="fewer-rows"),
    ],
)
def test_record_pairs_refuses_a_champion_output_that_is_not_probabilities(
    champion: np.ndarray,
) -> None:
    slot = Slot()
    assert record_pairs(slot.addr, champion, np.array([0.2, 0.3], np.float32)) == 1
    assert not slot.sums.any()


ROWS = np.array([[0.1, 5.0], [0.3, 5.0]], np.float32)
OUT = np.array([[0.2], [0.2]], np.float32)


def offer(pairing: Pairing, slot: Slot, champion: Champion, split_bp: int = 300) -> None:
    """One challenger answer offered, and scored after it is 'sent' as router.app does."""
    pairing.offer(7, split_bp, champion, slot.addr, ROWS, OUT)
    pair = pairing.pending
    pairing.pending = None
    if pair is not None:
        pairing.score(pair, 7)


def test_pairing_scores_the_same_rows_with_the_champion() -> None:
    slot, champion = Slot(), Champion()
    offer(Pairing(PairedConfig()), slot, champion)
    assert champion.runs == 1 and slot.counter(Counter.PAIRED) == 1
    np.testing.assert_allclose(slot.sums, pair_sums_reference(ROWS[:, :1], OUT))


def test_pairing_samples_the_configured_fraction_evenly() -> None:
    slot, champion = Slot(), Champion()
    pairing = Pairing(PairedConfig(fraction=0.25, max_per_s=1e5))
    for _ in range(100):
        offer(pairing, slot, champion)
    assert champion.runs == 25 and slot.counter(Counter.PAIRED) == 25


def test_pairing_rate_cap_bounds_champion_runs_under_a_flood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0]
    monkeypatch.setattr(rate_cap, "_perf_ns", lambda: now[0])
    slot, champion = Slot(), Champion()
    pairing = Pairing(PairedConfig(max_per_s=10.0))
    for _ in range(1000):  # a flood: 1,000 challenger answers in one instant
        offer(pairing, slot, champion)
    assert champion.runs == 10  # the bucket's one second of burst
    assert slot.counter(Counter.PAIRS_DROPPED) == 990
    for _ in range(300):  # then 3 s at 100 answers a second: 10 a second get through
        now[0] += 10_000_000
        offer(pairing, slot, champion)
    assert 39 <= champion.runs <= 40  # 30 more, but for a token's rounding


def test_pairing_stops_past_its_split() -> None:
    slot, champion = Slot(), Champion()
    offer(Pairing(PairedConfig(max_split_bp=1000)), slot, champion, split_bp=2000)
    assert champion.runs == 0 and slot.counter(Counter.PAIRS_DROPPED) == 0


@pytest.mark.parametrize(
    ("champion", "word"),
    [
        pytest.param(Champion(RuntimeError("boom")), 7, id="champion-raises"),
        pytest.param(Champion(np.array([[np.nan], [0.1]], np.float32)), 7, id="champion-nan"),
        pytest.param(Champion(), 8, id="split-changed"),
    ],
)
def test_pairing_drops_a_pair_it_cannot_trust(champion: Champion, word: int) -> None:
    slot = Slot()
    pairing = Pairing(PairedConfig())
    pairing.offer(7, 300, champion, slot.addr, ROWS, OUT)
    pair = pairing.pending
    assert pair is not None
    pairing.score(pair, word)
    assert slot.counter(Counter.PAIRS_DROPPED) == 1 and slot.counter(Counter.PAIRED) == 0
    assert not slot.sums.any()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param({"fraction": 1.5}, "[paired] fraction must be in [0, 1]", id="fraction"),
        pytest.param({"max_per_s": -1.0}, "[paired] max_per_s must be in", id="rate"),
        pytest.param({"max_split_bp": 0}, "[paired] max_split_bp must be in", id="split"),
        pytest.param({"enabled": "yes"}, "[paired] enabled must be a bool", id="type"),
        pytest.param({"rate": 1}, "unknown key(s) in [paired]: ['rate']", id="unknown"),
    ],
)
def test_paired_config_mistakes_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"paired": section})
    assert message in str(e.value)


def test_paired_scoring_is_on_by_default() -> None:
    config = Config.from_dict({})
    assert config.paired.on and config.paired.fraction == 1.0
    assert not Config.from_dict({"paired": {"enabled": False}}).paired.on
