from __future__ import annotations

import numpy as np
import pytest

from router.segments import SegmentSpace


def test_cell_unknown_values_fold_into_other() -> None:
    space = SegmentSpace.from_config({})
    known = space.cell(
        {
            "publisher_category": "news",
            "device_type": "mobile",
            "country_tier": "tier1",
            "creative_type": "banner",
        }
    )
    assert space.labels(known) == ("news", "mobile", "tier1", "banner")
    odd = space.cell({"publisher_category": "casino", "device_type": 3})
    assert space.labels(odd) == ("other", "other", "other", "other")
    assert space.cell(None) == space.n_cells - 1


def test_cells_cover_the_cross_product_once() -> None:
    space = SegmentSpace.from_config({"device_type": ["mobile", "desktop"]})
    assert space.n_cells == 8 * 3 * 4 * 4
    seen = {space.labels(c) for c in range(space.n_cells)}
    assert len(seen) == space.n_cells


def test_marginal_sums_one_dimension() -> None:
    space = SegmentSpace.from_config({})
    per_cell = np.zeros((space.n_cells, 2))
    per_cell[space.cell({"device_type": "tablet"}), 0] = 5
    per_cell[space.cell({"device_type": "tablet", "country_tier": "tier1"}), 0] = 2
    tablet = space.values[1].index("tablet")
    assert space.marginal(per_cell, "device_type")[tablet, 0] == 7


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"planet": ["earth"]}, id="unknown-dimension"),
        pytest.param({"device_type": ["a", "a"]}, id="duplicate-value"),
    ],
)
def test_from_config_refuses_bad_space(values: dict[str, list[str]]) -> None:
    with pytest.raises(ValueError):
        SegmentSpace.from_config(values)
