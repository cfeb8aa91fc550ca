"""The segment space: four dimensions whose value combinations are counter cells.

A request's segment (publisher category, device type, country tier, creative
type) maps to one cell of the cross product; a value the config does not list
folds into that dimension's `other`, so the space is fixed and bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

DIMENSIONS = ("publisher_category", "device_type", "country_tier", "creative_type")
OTHER = "other"

DEFAULT_VALUES: dict[str, tuple[str, ...]] = {
    "publisher_category": ("news", "gaming", "defi", "nft", "wallet", "social", "tools"),
    "device_type": ("mobile", "desktop", "tablet"),
    "country_tier": ("tier1", "tier2", "tier3"),
    "creative_type": ("banner", "native", "video"),
}


@dataclass(frozen=True)
class SegmentSpace:
    """Values per dimension, each list ending in `other`."""

    values: tuple[tuple[str, ...], ...]
    _index: tuple[dict[str, int], ...] = field(init=False, repr=False, compare=False)
    _strides: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _memo: dict[tuple[tuple[str, object], ...], int] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index = tuple({v: i for i, v in enumerate(vals)} for vals in self.values)
        strides = []
        stride = 1
        for vals in reversed(self.values):
            strides.append(stride)
            stride *= len(vals)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_strides", tuple(reversed(strides)))

    @classmethod
    def from_config(cls, values: Mapping[str, list[str] | tuple[str, ...]]) -> SegmentSpace:
        unknown = set(values) - set(DIMENSIONS)
        if unknown:
            raise ValueError(
                f"[segments] has unknown dimension(s) {sorted(unknown)}; "
                f"the dimensions are {list(DIMENSIONS)}"
            )
        dims = []
        for dim in DIMENSIONS:
            vals = [str(v) for v in values.get(dim, DEFAULT_VALUES[dim])]
            if len(set(vals)) != len(vals):
                raise ValueError(f"[segments] {dim} lists a value twice: {vals}")
            if OTHER in vals:
                vals.remove(OTHER)
            dims.append((*vals, OTHER))
        return cls(tuple(dims))

    @property
    def n_cells(self) -> int:
        n = 1
        for vals in self.values:
            n *= len(vals)
        return n

    def cell(self, segment: Mapping[str, object] | None) -> int:
        """The cell of a request's segment; unknown or absent values are `other`."""
        if not segment:
            return self.n_cells - 1
        # Few distinct segments recur: remember them (bounded) instead of recomputing.
        key = tuple(segment.items())
        try:
            return self._memo[key]
        except KeyError:
            pass
        except TypeError:  # unhashable values: computed, never memoised
            return self._compute(segment)
        cell = self._compute(segment)
        if len(self._memo) >= 65_536:
            self._memo.clear()
        self._memo[key] = cell
        return cell

    def _compute(self, segment: Mapping[str, object]) -> int:
        cell = 0
        for dim, index, stride in zip(DIMENSIONS, self._index, self._strides, strict=True):
            value = segment.get(dim)
            i = index.get(value, -1) if type(value) is str else -1
            if i < 0:
                i = len(index) - 1
            cell += i * stride
        return cell

    def labels(self, cell: int) -> tuple[str, ...]:
        out = []
        for vals, stride in zip(self.values, self._strides, strict=True):
            out.append(vals[(cell // stride) % len(vals)])
        return tuple(out)

    def marginal(self, per_cell: np.ndarray, dimension: str) -> np.ndarray:
        """Sum a per-cell array (cells on axis 0) down to one dimension's values."""
        axis = DIMENSIONS.index(dimension)
        shape = tuple(len(v) for v in self.values) + per_cell.shape[1:]
        cube = per_cell.reshape(shape)
        others = tuple(a for a in range(len(DIMENSIONS)) if a != axis)
        return np.asarray(cube.sum(axis=others))
