"""Throughput traces rebuilt from the server's telemetry, and a recency-weighted pool of them.

Every chunk report says how many bytes took how long (``delay_ms``, the request's round trip included)
and when (``request_start_ms`` .. ``end_ms``). Inverting the simulator's link model gives the link's
throughput during that chunk: ``delay = bytes / (rate * payload_fraction) + rtt``, so
``rate = bytes * 8 / (delay - rtt) / payload_fraction``. A session's chunks become one trace: a sample
at time 0 and one at each chunk's end (relative to its first request), the interval ending at a chunk's
end carrying that chunk's rate (the link during idle gaps is assumed to keep the rate of the next
download). Replaying the trace in the simulator with the same chunks gives back the reported delays
when downloads were back to back.

Broken input never stops a rebuild: rows with missing or non-numeric fields are skipped and counted;
sessions whose chunk indices jump are split at the jump; pieces shorter than ``min_chunks`` or whose
clock runs backwards are dropped and counted by reason.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from abr_common.units import BITS_PER_BYTE, KBIT_PER_MBIT, MS_PER_S
from simulator.link import LinkConfig
from traces.trace import Trace, TraceError

FloatArray = npt.NDArray[np.float64]
_FIELDS = ("id", "received_at_s", "session_id", "chunk_index", "chunk_bytes", "request_start_ms", "end_ms",
           "delay_ms")  # fmt: skip


class RebuildConfig(BaseModel):
    """How telemetry becomes traces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_chunks: int = Field(4, ge=2, description="Shorter session pieces are dropped.")
    rtt_ms: float = Field(LinkConfig().rtt_ms, ge=0, description="Round trip the simulator adds to every chunk.")
    payload_fraction: float = Field(LinkConfig().payload_fraction, gt=0, le=1)
    min_transfer_ms: float = Field(5.0, gt=0, description="Transfer times below this are raised to it.")
    max_mbps: float = Field(1000.0, gt=0, description="Rates above this are capped (a broken clock, not a link).")


@dataclass
class RebuiltPool:
    """Traces rebuilt from telemetry, with when each session ended and what was skipped."""

    traces: list[Trace]
    ended_at_s: list[float]  # the received_at_s of each trace's last chunk
    rows_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def weights(self, now_s: float, half_life_s: float) -> FloatArray:
        """Recency weights: a trace that ended ``half_life_s`` before another counts half as much.

        Scaled so the newest trace weighs 1 (relative weights are what matter; this way old pools do not
        underflow to all zeros).
        """
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        age = np.maximum(now_s - np.asarray(self.ended_at_s, dtype=np.float64), 0.0)
        return np.asarray(np.exp2(-(age - age.min()) / half_life_s), dtype=np.float64)


def weighted_sample(traces: list[Trace], weights: FloatArray, size: int) -> list[Trace]:
    """``size`` traces with multiplicities proportional to ``weights`` (largest remainder, deterministic)."""
    if len(traces) != len(weights) or not traces:
        raise ValueError(f"{len(traces)} traces and {len(weights)} weights")
    if size < 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("size must be >= 1 and weights finite, >= 0, not all zero")
    quota = weights / weights.sum() * size
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: size - int(counts.sum())]] += 1
    return [t for t, c in zip(traces, counts, strict=True) for _ in range(int(c))]


def rebuild_traces(
    db: Path, config: RebuildConfig | None = None, *, since_s: float | None = None, until_s: float | None = None
) -> RebuiltPool:
    """Read telemetry rows received in [since_s, until_s) and rebuild one trace per session piece."""
    config = config or RebuildConfig()
    if not db.is_file():
        raise ValueError(f"telemetry database {db}: no such file")
    query = f"SELECT {', '.join(_FIELDS)} FROM chunks WHERE 1=1"
    params: list[float] = []
    if since_s is not None:
        query += " AND received_at_s >= ?"
        params.append(since_s)
    if until_s is not None:
        query += " AND received_at_s < ?"
        params.append(until_s)
    query += " ORDER BY session_id, id"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(query, params).fetchall()
    except sqlite3.Error as err:
        raise ValueError(f"telemetry database {db}: cannot read ({err})") from None
    pool = RebuiltPool([], [])
    pool.rows_read = len(rows)
    sessions: dict[str, list[tuple[float, ...]]] = {}
    for row in rows:
        parsed = _parse(row)
        if parsed is None:
            pool.skipped["bad row"] += 1
            continue
        sessions.setdefault(str(row[2]), []).append(parsed)
    for session_id, chunks in sessions.items():
        for k, piece in enumerate(_pieces(chunks)):
            if len(piece) < config.min_chunks:
                pool.skipped["too short"] += 1
                continue
            trace = session_trace(f"{session_id}#{k}", piece, config)
            if trace is None:
                pool.skipped["clock runs backwards"] += 1
                continue
            pool.traces.append(trace)
            pool.ended_at_s.append(max(c[0] for c in piece))
    return pool


def _parse(row: tuple[Any, ...]) -> tuple[float, ...] | None:
    """(received_at_s, chunk_index, bytes, start_ms or NaN, end_ms or NaN, delay_ms), or None if unusable."""
    try:
        received, index, size, delay = float(row[1]), int(row[3]), float(row[4]), float(row[7])
        start = float(row[5]) if row[5] is not None else math.nan
        end = float(row[6]) if row[6] is not None else math.nan
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(received) and math.isfinite(size) and math.isfinite(delay)) or size <= 0 or delay <= 0:
        return None
    if index < 0:
        return None
    return received, float(index), size, start, end, delay


def _pieces(chunks: list[tuple[float, ...]]) -> list[list[tuple[float, ...]]]:
    """Split a session where its chunk index does not follow on (a restart, a gap, a duplicate)."""
    pieces: list[list[tuple[float, ...]]] = [[chunks[0]]]
    for chunk in chunks[1:]:
        if chunk[1] == pieces[-1][-1][1] + 1:
            pieces[-1].append(chunk)
        else:
            pieces.append([chunk])
    return pieces


def session_trace(name: str, piece: list[tuple[float, ...]], config: RebuildConfig) -> Trace | None:
    """One session piece's trace: chunks as (received_at_s, index, bytes, start_ms, end_ms, delay_ms).

    None when its clock runs backwards. ``start_ms``/``end_ms`` NaN: downloads taken as back to back.
    """
    size = np.array([c[2] for c in piece])
    delay_ms = np.array([c[5] for c in piece])
    transfer_ms = np.maximum(delay_ms - config.rtt_ms, config.min_transfer_ms)
    # bits per millisecond are kbit/s
    mbps = np.minimum(size * BITS_PER_BYTE / (transfer_ms * KBIT_PER_MBIT) / config.payload_fraction, config.max_mbps)
    start = np.array([c[3] for c in piece])
    end = np.array([c[4] for c in piece])
    if np.all(np.isfinite(start)) and np.all(np.isfinite(end)):
        ends_s = (end - start[0]) / MS_PER_S
    else:  # no clock in the reports (CMCD throughput only): downloads assumed back to back
        ends_s = np.cumsum(delay_ms) / MS_PER_S
    times = np.concatenate([[0.0], ends_s])
    if np.any(np.diff(times) <= 0):
        return None
    try:
        return Trace(name, times, np.concatenate([[mbps[0]], mbps]), source="telemetry")
    except TraceError:
        return None
