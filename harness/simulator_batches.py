"""What the simulator sends: batches of pre-encoded /predict bodies drawn from the synthetic
world, with each candidate's true CTR and the draw that decides the shown ad's click."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from harness import ground_truth
from harness.simulator_config import SimConfig


@dataclass
class Batch:
    """Pre-encoded /predict bodies and what the world knows about them."""

    first: int  # index of the first request of the run
    bodies: list[bytes]  # msgpack /predict bodies
    truth: np.ndarray  # [n, k] true CTR of each candidate
    click_draw: np.ndarray  # [n] uniform draw: click iff below the shown ad's true CTR


def make_batch(
    config: SimConfig, rng: np.random.Generator, features: list[str], first: int, n: int
) -> Batch:
    """`n` requests from the world, rows in the order of `features` (the champion's)."""
    x = ground_truth.sample_requests(rng, n, config.candidates, config.mix)
    truth = ground_truth.ground_truth_ctr(x)
    click_draw = rng.random(n)
    # Creative type differs between candidates; the request carries its first candidate's (the
    # ad server labels the request before it knows which ad wins).
    seg = {dim: labels.tolist() for dim, labels in ground_truth.segments(x[:, 0, :]).items()}
    rows = x[:, :, ground_truth.feature_columns(features)].tolist()
    bodies = [
        msgpack.packb(
            {
                "request_id": f"{config.request_prefix}{config.seed}-{first + j}",
                "features": rows[j]
                if config.positional
                else [dict(zip(features, row, strict=True)) for row in rows[j]],
                "segment": {dim: seg[dim][j] for dim in ground_truth.LABELS},
            }
        )
        for j in range(n)
    ]
    return Batch(first, bodies, truth, click_draw)
