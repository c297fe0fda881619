"""A trace-shaped link for real HTTP responses: one token bucket shared by every connection.

`ShapedLink` hands out the trace's capacity (`simulator.capacity.TraceCapacity`) in order of request:
a response slice of ``n`` bytes may leave once the link has had time to carry every byte reserved
before it plus these ``n``. Capacity the link has while nobody sends is lost beyond ``burst_bytes`` (the
bucket depth), so a connection that starts on an idle link gets no more than the trace allows. Audio,
video and manifest share one link, as on a real access link. The clock starts at the first request,
so every emulated session plays the trace from its beginning. (The fixed per-request delay is the
segment server's, `abr_server.media.MediaApp`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from simulator.capacity import TraceCapacity

#: Bytes written per pacing step; small enough that concurrent responses interleave finely.
SLICE_BYTES = 16 * 1024


class ShapedLink:
    """Pace byte transfers through a trace's capacity, shared by all callers."""

    def __init__(
        self, capacity: TraceCapacity, *, burst_bytes: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst_bytes < 0:
            raise ValueError(f"burst_bytes must be >= 0, got {burst_bytes}")
        self.capacity, self.burst_bytes, self._clock = capacity, burst_bytes, clock
        self._started_s: float | None = None
        self._reserved_bytes = 0.0  # cumulative link bytes handed out so far
        self.bytes_sent = 0

    def elapsed_s(self) -> float:
        """Seconds since the link started (its first request); 0 before."""
        if self._started_s is None:
            return 0.0
        return self._clock() - self._started_s

    def start(self) -> None:
        """Start the trace clock now unless it runs already."""
        if self._started_s is None:
            self._started_s = self._clock()

    def reserve(self, n_bytes: int) -> float:
        """Reserve ``n_bytes`` of capacity; the elapsed time at which they have crossed the link."""
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
        self.start()
        now = self.elapsed_s()
        available_from = self.capacity.bytes_by(now) - self.burst_bytes
        self._reserved_bytes = max(self._reserved_bytes, available_from) + n_bytes
        self.bytes_sent += n_bytes
        return self.capacity.time_for(self._reserved_bytes)

    async def transmit(self, n_bytes: int) -> None:
        """Wait until ``n_bytes`` more have crossed the link (after everything reserved before them)."""
        done_s = self.reserve(n_bytes)
        wait_s = done_s - self.elapsed_s()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
