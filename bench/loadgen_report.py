"""What the load generator makes of a run: its HDR histogram, summary, .hgrm and plots.

The raw integers a run kept (start, last byte, status per answered request) go into an
`HdrHistogram(1, 60_000_000, 3)` (microseconds) after the run, off the hot path, and into a
JSON-ready summary. Runs are compared as latency-by-percentile curves, read back from their
.hgrm or .json output and overlaid on HdrHistogram's axis.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from bench.loadgen_http import Run

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p99.9_ms": 99.9}


@dataclass
class LoadResult:
    """A finished run: its summary (JSON-ready), its latency histogram and raw samples (µs).

    `latencies_us` holds every measured response's latency, in completion order;
    `lags_us` how late the open-loop dispatcher was for each measured request.
    """

    summary: dict[str, Any]
    histogram: HdrHistogram
    latencies_us: np.ndarray = field(repr=False)
    lags_us: np.ndarray = field(repr=False)

    def hgrm(self) -> str:
        return hgrm_text(self.histogram)

    def curve(self) -> Curve:
        points = self.summary["percentile_distribution"]
        label = self.summary.get("label") or self.summary["url"]
        return Curve(label, [p for p, _ in points], [v for _, v in points])

    def write(self, *, json_path: Path | None = None, hgrm_path: Path | None = None) -> None:
        if json_path is not None:
            json_path.write_text(json.dumps(self.summary, indent=2) + "\n")
        if hgrm_path is not None:
            hgrm_path.write_text(self.hgrm())


def summarise(run: Run, config: dict[str, Any], unfinished: int) -> LoadResult:
    """The run's measured requests (started after warmup) as histogram and summary."""
    starts = np.frombuffer(run.starts, dtype=np.int64)
    dones = np.frombuffer(run.dones, dtype=np.int64)
    statuses = np.frombuffer(run.statuses, dtype=np.uint16)
    measured = starts >= run.warmup_end_ns
    latencies_us = np.clip((dones[measured] - starts[measured]) // 1000, LOWEST_US, HIGHEST_US)
    histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    values, counts = np.unique(latencies_us, return_counts=True)
    for value, n in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, n)

    codes, code_counts = np.unique(statuses[measured], return_counts=True)
    by_status = {str(c): int(n) for c, n in zip(codes, code_counts, strict=True) if c >= 300}
    responses = int(measured.sum())
    errors_total = sum(by_status.values()) + sum(run.conn_errors.values()) + unfinished
    elapsed_s = (int(dones[measured].max()) - run.warmup_end_ns) / 1e9 if responses else 0.0

    summary: dict[str, Any] = dict(config)
    summary.update(
        requests=responses + run.lost + unfinished,
        responses=responses,
        elapsed_s=round(elapsed_s, 6),
        rate_achieved=round(responses / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        errors={
            "total": errors_total,
            "status": by_status,
            "connection": dict(run.conn_errors),
            "unfinished": unfinished,
        },
    )
    summary.update(_latency_summary(histogram))
    lags_us = np.frombuffer(run.lags, dtype=np.int64) / 1000.0
    if run.closed_loop:
        summary.update(kept_up=None, generator_lag_ms=None, max_backlog=None)
    else:
        lag_p99_ms = float(np.percentile(lags_us, 99)) / 1000 if len(lags_us) else 0.0
        lag_max_ms = float(lags_us.max()) / 1000 if len(lags_us) else 0.0
        summary.update(
            kept_up=lag_p99_ms <= config["max_lag_ms"],
            generator_lag_ms={"p99": round(lag_p99_ms, 3), "max": round(lag_max_ms, 3)},
            max_backlog=run.max_backlog,
        )
    summary["percentile_distribution"] = percentile_curve(histogram)
    return LoadResult(summary, histogram, latencies_us, lags_us)


def _latency_summary(histogram: HdrHistogram) -> dict[str, float | None]:
    names = [*SUMMARY_PERCENTILES, "max_ms", "mean_ms"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(names)
    values = histogram.get_percentile_to_value_dict(list(SUMMARY_PERCENTILES.values()))
    out: dict[str, float | None] = {
        name: values[p] / 1000 for name, p in SUMMARY_PERCENTILES.items()
    }
    out["max_ms"] = histogram.get_max_value() / 1000
    out["mean_ms"] = round(histogram.get_mean_value() / 1000, 3)
    return out


def percentile_curve(histogram: HdrHistogram, ticks: int = 5) -> list[list[float]]:
    """[[percentile (0–100), latency ms], ...] at the .hgrm's points."""
    if histogram.get_total_count() == 0:
        return []
    return [
        [item.percentile_level_iterated_to, item.value_iterated_to / 1000]
        for item in histogram.get_percentile_iterator(ticks)
    ]


def hgrm_text(histogram: HdrHistogram) -> str:
    """The standard .hgrm percentile distribution, values in milliseconds."""
    out = io.BytesIO()
    histogram.output_percentile_distribution(out, 1000.0)
    text = out.getvalue().decode()
    # hdrh scales the mean by the unit ratio but not the standard deviation.
    stddev_ms = histogram.get_stddev() / 1000 if histogram.get_total_count() else 0.0
    return re.sub(
        r"StdDeviation   = +[0-9.]+\]", f"StdDeviation   = {stddev_ms:12.3f}]", text, count=1
    )


# ---------------------------------------------------------------- reading and plotting runs


@dataclass(frozen=True)
class Curve:
    label: str
    percentiles: list[float]  # 0–100
    values_ms: list[float]


def read_curve(path: Path) -> Curve:
    """A run's latency-by-percentile curve from its .hgrm or .json output."""
    if path.suffix == ".json":
        summary = json.loads(path.read_text())
        points = summary.get("percentile_distribution")
        if points is None:
            raise ValueError(f"{path}: no percentile_distribution (not a bench.loadgen summary)")
        label = summary.get("label") or path.stem
        return Curve(label, [p for p, _ in points], [v for _, v in points])
    percentiles, values = [], []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) in (3, 4) and not line.startswith("#"):
            try:
                value, fraction = float(fields[0]), float(fields[1])
            except ValueError:
                continue  # the column header
            values.append(value)
            percentiles.append(fraction * 100)
    if not values:
        raise ValueError(f"{path}: no percentile lines (not an .hgrm file)")
    return Curve(path.stem, percentiles, values)


def plot_curves(curves: Sequence[Curve], out: Path, title: str = "Latency by percentile") -> None:
    """Overlay curves on HdrHistogram's axis: x = 1/(1-p), log scale, labelled in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    top = 10.0
    for curve in curves:
        points = [
            (100 / (100 - p), v)
            for p, v in zip(curve.percentiles, curve.values_ms, strict=True)
            if p < 100
        ]
        if points:
            top = max(top, max(x for x, _ in points))
            ax.plot([x for x, _ in points], [v for _, v in points], label=curve.label)
    ax.set_xscale("log")
    ticks = [1.0, 2.0] + [10.0**k for k in range(1, 7) if 10.0 ** (k - 1) < top]
    labels = {1.0: "0%", 2.0: "50%"}
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels.get(t) or f"{100 - 100 / t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(1, ticks[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
