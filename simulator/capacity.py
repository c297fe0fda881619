"""How many payload bytes a throughput trace can carry by a given time, and the inverse.

The same link semantics as the chunk simulator (`simulator.reference`): the first pass starts at the
trace's first sample ``times_s[0]``; interval ``k`` (between samples ``k`` and ``k + 1``) carries
``throughput_mbps[k + 1]`` times the payload fraction; after the last sample the trace repeats with
period ``times_s[-1]``, its first interval then starting at clock 0. Used by the trace-shaped segment
server (`abr_server.shaping`) to pace real HTTP responses exactly as the simulator paces chunks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT
from traces.trace import Trace

FloatArray = npt.NDArray[np.float64]


class TraceCapacity:
    """Cumulative deliverable bytes along a looped trace, from the moment the link starts.

    ``bytes_by(t)`` is the payload the link can deliver in the first ``t`` seconds; ``time_for(b)`` is
    the earliest time by which ``b`` bytes can have been delivered (its inverse where the rate is > 0).
    """

    def __init__(self, trace: Trace, payload_fraction: float) -> None:
        if not 0 < payload_fraction <= 1:
            raise ValueError(f"payload_fraction must be in (0, 1], got {payload_fraction}")
        times = trace.times_s
        self.name = trace.name
        self.start_s: FloatArray = np.concatenate([[0.0], times[1:-1]])
        self.end_s: FloatArray = times[1:].copy()
        self.rate_bytes_per_s: FloatArray = (
            trace.throughput_mbps[1:] * (BITS_PER_MBIT / BITS_PER_BYTE) * payload_fraction
        )
        self.cum_end_bytes: FloatArray = np.cumsum(self.rate_bytes_per_s * (self.end_s - self.start_s))
        self.period_s = float(times[-1])
        self.cycle_bytes = float(self.cum_end_bytes[-1])
        self.origin_s = float(times[0])
        self._origin_bytes = self._cycle_bytes_at(self.origin_s)

    def _cycle_bytes_at(self, clock_s: float) -> float:
        """Bytes from the cycle start to ``clock_s`` (0 <= clock_s <= period)."""
        k = min(int(np.searchsorted(self.end_s, clock_s, side="left")), self.end_s.size - 1)
        before = float(self.cum_end_bytes[k - 1]) if k > 0 else 0.0
        return before + float(self.rate_bytes_per_s[k]) * max(clock_s - float(self.start_s[k]), 0.0)

    def bytes_by(self, elapsed_s: float) -> float:
        """Payload bytes the link can deliver in ``elapsed_s`` seconds from its start."""
        if elapsed_s < 0:
            raise ValueError(f"elapsed_s must be >= 0, got {elapsed_s}")
        absolute = self.origin_s + elapsed_s
        cycles, clock = divmod(absolute, self.period_s)
        return cycles * self.cycle_bytes + self._cycle_bytes_at(clock) - self._origin_bytes

    def time_for(self, total_bytes: float) -> float:
        """Earliest elapsed time (s) by which ``total_bytes`` can have been delivered."""
        if total_bytes <= 0:
            return 0.0
        absolute = self._origin_bytes + total_bytes
        cycles, rest = divmod(absolute, self.cycle_bytes)
        if rest == 0.0:  # exactly at a cycle's end: the earlier cycle's last delivering instant
            cycles, rest = cycles - 1, self.cycle_bytes
        k = int(np.searchsorted(self.cum_end_bytes, rest, side="left"))
        before = float(self.cum_end_bytes[k - 1]) if k > 0 else 0.0
        clock = float(self.start_s[k]) + (rest - before) / float(self.rate_bytes_per_s[k])
        return cycles * self.period_s + clock - self.origin_s

    def rate_at(self, elapsed_s: float) -> float:
        """The link's payload rate (bytes/s) at ``elapsed_s``."""
        clock = (self.origin_s + elapsed_s) % self.period_s
        k = min(int(np.searchsorted(self.end_s, clock, side="right")), self.end_s.size - 1)
        return float(self.rate_bytes_per_s[k])
