"""Durations, numbers and percentages as the status table and the post-mortem spell them."""

from __future__ import annotations

import pytest

from guardrails.units import duration, number, percent


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(None, "-", id="none"),
        pytest.param(0, "0s", id="zero"),
        pytest.param(59.4, "59s", id="rounded-down"),
        pytest.param(59.6, "1m00s", id="rounded-up-to-a-minute"),
        pytest.param(303, "5m03s", id="minutes"),
        pytest.param(7500, "2h05m", id="hours-drop-seconds"),
        pytest.param(86_400, "1d00h", id="a-day"),
        pytest.param(12 * 86_400 + 4 * 3600 + 59, "12d04h", id="days-drop-minutes"),
    ],
)
def test_duration_shows_the_two_largest_units(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(None, "-", id="none"),
        pytest.param(0.000123456, "0.0001235", id="float"),
        pytest.param(12, "12", id="int"),
        pytest.param("n/a", "n/a", id="text"),
    ],
)
def test_number_keeps_four_significant_digits_of_floats(value: object, text: str) -> None:
    assert number(value) == text


def test_percent_of_a_ratio() -> None:
    assert (percent(0.01234, 3), percent(0.5), percent(None)) == ("1.234%", "50.00%", "-")
