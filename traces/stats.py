"""Summary statistics and a histogram of a set of throughput traces.

All throughput statistics are **time-weighted over intervals**: every interval ``(times_s[i-1],
times_s[i]]`` of every trace contributes its throughput ``throughput_mbps[i]`` with weight equal to its
length in seconds (the first sample of a trace, which describes no interval, is not counted). So the
mean is total megabits over total seconds, and a percentile ``p`` is the smallest throughput ``x`` such
that the link runs at ``x`` or less for at least ``p`` percent of the time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from abr_common.files import figure_png, write_atomic
from traces.trace import FloatArray, Trace


class TraceSetStats(BaseModel):
    """Statistics of a set of traces (throughputs time-weighted over intervals; see the module doc)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    count: int
    """Number of traces."""
    total_duration_s: float
    """Sum of the traces' durations (first to last sample)."""
    mean_duration_s: float
    """Mean trace duration."""
    mean_throughput_mbps: float
    """Time-weighted mean throughput over all intervals of all traces."""
    p10_throughput_mbps: float
    """Time-weighted 10th percentile of throughput."""
    p50_throughput_mbps: float
    """Time-weighted median throughput."""
    p90_throughput_mbps: float
    """Time-weighted 90th percentile of throughput."""
    min_throughput_mbps: float
    """Lowest throughput of any interval."""
    max_throughput_mbps: float
    """Highest throughput of any interval."""


def _intervals(traces: Sequence[Trace]) -> tuple[FloatArray, FloatArray]:
    """All intervals of all traces as ``(throughput_mbps, length_s)``."""
    if not traces:
        raise ValueError("no traces to describe")
    throughput = np.concatenate([trace.throughput_mbps[1:] for trace in traces])
    length_s = np.concatenate([np.diff(trace.times_s) for trace in traces])
    return throughput, length_s


def weighted_quantiles(values: FloatArray, weights: FloatArray, quantiles: Sequence[float]) -> FloatArray:
    """For each ``q``, the smallest value whose cumulative weight reaches ``q`` of the total weight."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    cumulative = np.cumsum(weights[order])
    positions = np.searchsorted(cumulative, np.asarray(quantiles) * cumulative[-1], side="left")
    return sorted_values[np.minimum(positions, sorted_values.size - 1)]


def describe(traces: Sequence[Trace]) -> TraceSetStats:
    """Count, durations and time-weighted throughput statistics of ``traces`` (see the module doc).

    Raises:
        ValueError: ``traces`` is empty.
    """
    throughput, length_s = _intervals(traces)
    total_s = float(np.sum(length_s))
    p10, p50, p90 = weighted_quantiles(throughput, length_s, (0.1, 0.5, 0.9))
    durations = [trace.duration_s for trace in traces]
    return TraceSetStats(
        count=len(traces),
        total_duration_s=float(np.sum(durations)),
        mean_duration_s=float(np.mean(durations)),
        mean_throughput_mbps=float(np.sum(throughput * length_s) / total_s),
        p10_throughput_mbps=float(p10),
        p50_throughput_mbps=float(p50),
        p90_throughput_mbps=float(p90),
        min_throughput_mbps=float(np.min(throughput)),
        max_throughput_mbps=float(np.max(throughput)),
    )


def plot_histogram(traces: Sequence[Trace], path: str | os.PathLike[str], *, bins: int = 50) -> Path:
    """Write a PNG histogram of throughput, as a share of time over all traces, atomically to ``path``.

    Uses a bare `matplotlib.figure.Figure` (Agg rendering), so no pyplot state or backend is touched.

    Returns:
        the path written.
    """
    # Imported here: matplotlib takes most of a second to import, and only plotting needs it.
    from matplotlib.figure import Figure

    throughput, length_s = _intervals(traces)
    stats = describe(traces)
    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    axes = figure.subplots()
    axes.hist(throughput, bins=bins, weights=100.0 * length_s / np.sum(length_s), color="tab:blue")
    axes.axvline(stats.mean_throughput_mbps, color="tab:red", linestyle="--", label="mean")
    axes.axvline(stats.p50_throughput_mbps, color="tab:orange", linestyle=":", label="median")
    axes.set_xlabel("throughput (Mbit/s)")
    axes.set_ylabel("share of time (%)")
    axes.set_title(f"{stats.count} traces, {stats.total_duration_s:.0f} s in all")
    axes.legend()
    target = Path(path)
    write_atomic(target, figure_png(figure, dpi=100))
    return target
