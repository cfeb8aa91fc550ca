"""How quantities read to people — durations, numbers, percentages — spelled one way for
the CLI's status table and the post-mortem (both import this; the data plane does not)."""

from __future__ import annotations

from typing import Any

# (unit, its symbol, the next smaller unit, its symbol): a duration shows its two largest units.
_SPANS = ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s"))


def duration(seconds: float | None) -> str:
    """`42s`, `5m03s`, `2h05m`, `1d00h`: rounded to the second, its two largest units shown;
    `-` for None."""
    if seconds is None:
        return "-"
    s = round(seconds)
    for size, unit, sub, sub_unit in _SPANS:
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub:02d}{sub_unit}"
    return f"{s}s"


def number(value: Any) -> str:
    """A value as shown in a table: floats to 4 significant digits, `-` for None."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def percent(value: float | None, digits: int = 2) -> str:
    """A ratio as a percentage (0.0123 -> `1.23%`), `-` for None."""
    return "-" if value is None else f"{value * 100:.{digits}f}%"
