"""Scalar reference implementation of the chunk-download semantics: one session, plain Python.

This is the readable statement of the semantics and the test oracle for the vectorised core
(`simulator.batch`). It follows the reference (Pensieve) simulator step by step:

- The trace is a list of intervals: interval ``k`` (1-based pointer ``k``) runs from the previous
  sample's time to ``times_s[k]`` at ``throughput_mbps[k]``. An interval delivers
  ``throughput_mbps * 1e6 / 8 * duration_s * payload_fraction`` payload bytes.
- Downloading walks the intervals from the current pointer and clock; when the rest of the chunk fits
  inside an interval, only the fraction ``remaining_bytes / throughput_bytes_per_s / payload_fraction``
  is added to the delay and the clock. Past the last sample the trace wraps to pointer 1 with clock 0.
- ``delay_ms = 1000 * delay_s + rtt_ms`` (times a noise factor in training);
  ``rebuffer = max(delay - buffer, 0)``; ``buffer = max(buffer - delay, 0) + chunk duration``.
- Above the buffer cap the player sleeps ``ceil(excess / drain_step) * drain_step`` and the clock
  advances by the sleep without downloading (same wrap rule).

Buffer arithmetic is kept in milliseconds, as in the reference, so results agree to rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT, MS_PER_S
from simulator.link import LinkConfig
from simulator.video import Video
from traces.trace import Trace

#: Level of the first chunk, fetched before the policy sees anything (the reference convention: the
#: second-lowest level, as the reference simulator's ``DEFAULT_QUALITY``).
DEFAULT_INITIAL_QUALITY = 1


class ChunkOutcome(NamedTuple):
    """What happened while one chunk was fetched (units in the names)."""

    quality: int
    chunk_index: int
    chunk_bytes: int
    delay_ms: float
    sleep_ms: float
    buffer_s: float
    rebuf_s: float
    end_of_video: bool
    chunks_remaining: int
    next_chunk_bytes: tuple[int, ...]


class ScalarSession:
    """One streaming session over one trace, stepped chunk by chunk.

    Args:
        trace: the throughput trace.
        video: the video being streamed.
        link: link and buffer parameters.
        start_index: 0-based interval to start in (the reference pointer minus one); the clock starts
            at ``times_s[start_index]``. 0 is the evaluation start.
        noise_factors: optional per-chunk multiplicative delay noise (length ``video.n_chunks``).
    """

    def __init__(
        self,
        trace: Trace,
        video: Video,
        link: LinkConfig,
        *,
        start_index: int = 0,
        noise_factors: list[float] | None = None,
    ) -> None:
        n_intervals = len(trace) - 1
        if not 0 <= start_index < n_intervals:
            raise ValueError(f"start_index must be in [0, {n_intervals}), got {start_index}")
        if noise_factors is not None and len(noise_factors) != video.n_chunks:
            raise ValueError(f"noise_factors needs {video.n_chunks} values, got {len(noise_factors)}")
        self.video = video
        self.link = link
        self._times_s = [float(t) for t in trace.times_s]
        self._tput_mbps = [float(b) for b in trace.throughput_mbps]
        self._noise = noise_factors
        # Plain Python lists: the scalar path is the readable oracle, but it should not be needlessly slow.
        self._sizes = video.chunk_bytes.tolist()
        self._next_sizes = [tuple(col) for col in video.chunk_bytes.T.tolist()] + [(0,) * video.n_levels]
        self.pointer = start_index + 1
        self.clock_s = self._times_s[start_index]
        self.buffer_ms = 0.0
        self.chunk_index = 0

    @property
    def done(self) -> bool:
        """Whether every chunk has been fetched."""
        return self.chunk_index >= self.video.n_chunks

    def _advance_pointer(self) -> None:
        self.clock_s = self._times_s[self.pointer]
        self.pointer += 1
        if self.pointer >= len(self._tput_mbps):
            self.pointer = 1
            self.clock_s = 0.0

    def download(self, quality: int) -> ChunkOutcome:
        """Fetch the next chunk at ``quality`` and return what happened."""
        if self.done:
            raise RuntimeError("the session has ended; every chunk was already fetched")
        if not 0 <= quality < self.video.n_levels:
            raise ValueError(f"quality must be in [0, {self.video.n_levels}), got {quality}")
        link = self.link
        chunk_bytes = self._sizes[quality][self.chunk_index]

        delay_s = 0.0
        sent_bytes = 0.0
        while True:
            bytes_per_s = self._tput_mbps[self.pointer] * BITS_PER_MBIT / BITS_PER_BYTE
            duration_s = self._times_s[self.pointer] - self.clock_s
            payload_bytes = bytes_per_s * duration_s * link.payload_fraction
            if sent_bytes + payload_bytes > chunk_bytes:
                fraction_s = (chunk_bytes - sent_bytes) / bytes_per_s / link.payload_fraction
                delay_s += fraction_s
                self.clock_s += fraction_s
                break
            sent_bytes += payload_bytes
            delay_s += duration_s
            self._advance_pointer()

        delay_ms = delay_s * MS_PER_S + link.rtt_ms
        if self._noise is not None:
            delay_ms *= self._noise[self.chunk_index]

        rebuf_ms = max(delay_ms - self.buffer_ms, 0.0)
        self.buffer_ms = max(self.buffer_ms - delay_ms, 0.0) + self.video.chunk_duration_s * MS_PER_S

        sleep_ms = 0.0
        max_buffer_ms = link.max_buffer_s * MS_PER_S
        if self.buffer_ms > max_buffer_ms:
            sleep_ms = math.ceil((self.buffer_ms - max_buffer_ms) / link.drain_step_ms) * link.drain_step_ms
            self.buffer_ms -= sleep_ms
            left_s = sleep_ms / MS_PER_S
            while True:
                duration_s = self._times_s[self.pointer] - self.clock_s
                if duration_s > left_s:
                    self.clock_s += left_s
                    break
                left_s -= duration_s
                self._advance_pointer()

        fetched = self.chunk_index
        self.chunk_index += 1
        remaining = self.video.n_chunks - self.chunk_index
        return ChunkOutcome(
            quality=quality,
            chunk_index=fetched,
            chunk_bytes=chunk_bytes,
            delay_ms=delay_ms,
            sleep_ms=sleep_ms,
            buffer_s=self.buffer_ms / MS_PER_S,
            rebuf_s=rebuf_ms / MS_PER_S,
            end_of_video=remaining == 0,
            chunks_remaining=remaining,
            next_chunk_bytes=self._next_sizes[self.chunk_index],
        )
