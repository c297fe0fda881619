"""Small constructors shared by tests."""

from __future__ import annotations

import numpy as np

from simulator.video import Video
from traces.trace import Trace


def make_trace(times_s: list[float], throughput_mbps: list[float], name: str = "t") -> Trace:
    """A trace from literal lists."""
    return Trace(name, np.array(times_s, dtype=float), np.array(throughput_mbps, dtype=float))


def make_video(sizes: list[list[int]], bitrates_kbps: tuple[int, ...] | None = None, chunk_s: float = 4.0) -> Video:
    """A video from literal chunk sizes ``[levels][chunks]``."""
    ladder = bitrates_kbps or tuple(300 * (i + 1) for i in range(len(sizes)))
    return Video(ladder, chunk_s, np.array(sizes, dtype=np.int64), name="hand")
