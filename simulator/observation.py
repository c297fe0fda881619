"""Observations: what a policy sees before choosing the next chunk's level.

One implementation shared by the simulator's environments, the evaluation loop and the server, so a
policy sees exactly the same numbers in training and in service. `ObservationBuilder` keeps the last
``history_len`` chunks of B sessions; `Observation` is an immutable snapshot of it. ``to_state`` gives
the Pensieve 6 x W matrix (W = max(history_len, n_levels)), newest chunk in the last column:

====  ======================================================  =========
row   content                                                  unit
====  ======================================================  =========
0     bitrate of the chunk's level / top bitrate               1
1     buffer after the chunk / ``buffer_norm_s``               10 s
2     measured throughput: chunk bytes / delay                 kB/ms
3     delay / 1000 / ``buffer_norm_s``                         10 s
4     sizes of the next chunk at each level (first n_levels)   MB
5     min(chunks remaining, cap) / cap                         1
====  ======================================================  =========
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from abr_common.units import BITS_PER_BYTE, BITS_PER_MBIT, BYTES_PER_KB, BYTES_PER_MB, KBIT_PER_MBIT, MS_PER_S
from simulator.batch import ChunkResult
from simulator.video import Video

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Rows of the Pensieve state matrix.
N_STATE_ROWS = 6


class HistoryPadding(StrEnum):
    """What the state holds in the columns before a session's first chunk."""

    zeros = "zeros"  # Pensieve's
    oldest = "oldest"  # copies of the oldest chunk seen
    prior = "prior"  # the session's throughput prior in the throughput row (zeros where it has none)


class ObservationSpec(BaseModel):
    """Shape and normalisation of observations (the defaults are Pensieve's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    history_len: int = Field(8, ge=1, le=64, description="Number of past chunks kept (columns of the state).")
    buffer_norm_s: float = Field(10.0, gt=0, description="Buffer and delay are divided by this (seconds).")
    remaining_cap_chunks: int = Field(48, ge=1, description="Chunks remaining are capped at this, then scaled.")
    history_padding: HistoryPadding = Field(
        HistoryPadding.zeros,
        description="Columns older than the session's first chunk: zeros (Pensieve's); copies of the oldest "
        "chunk seen, so a session's first measurements are not read as a history of zero throughput; or 'prior': "
        "the throughput the player knew before the session (`Observation.prior_mbps`) in the throughput row.",
    )

    def width(self, video: Video) -> int:
        """Number of state columns for ``video``."""
        return self.width_for(video.n_levels)

    def width_for(self, n_levels: int) -> int:
        """Number of state columns for a ladder of ``n_levels``."""
        return max(self.history_len, n_levels)

    def to_metadata(self) -> dict[str, object]:
        """JSON-ready description (checkpoints record it)."""
        return {"rows": N_STATE_ROWS, **self.model_dump()}


@dataclass(frozen=True)
class Observation:
    """A snapshot of B sessions' recent history (arrays with leading dimension B).

    History arrays are ``[B, history_len]``, oldest first, newest in the last column; only the last
    ``n_history`` columns of a row are valid (the rest are zeros).
    """

    last_quality: IntArray
    buffer_s: FloatArray
    chunk_index: IntArray  # index of the next chunk to fetch
    chunks_remaining: IntArray
    next_chunk_bytes: IntArray  # [B, n_levels]
    n_history: IntArray
    quality_history: IntArray
    buffer_s_history: FloatArray
    chunk_bytes_history: FloatArray
    delay_ms_history: FloatArray
    remaining_history: IntArray
    prior_mbps: FloatArray  # [B]: the throughput the player knew when the session started; 0 = none

    @property
    def n_sessions(self) -> int:
        """Batch size B."""
        return int(self.last_quality.shape[0])

    def throughput_mbps_history(self) -> FloatArray:
        """Measured throughput of past chunks in Mbit/s (bytes / delay including RTT); 0 where invalid."""
        with np.errstate(divide="ignore", invalid="ignore"):
            # bits per millisecond are kbit/s
            tput = self.chunk_bytes_history * BITS_PER_BYTE / (self.delay_ms_history * KBIT_PER_MBIT)
        return np.where(self.delay_ms_history > 0, tput, 0.0)

    def to_state(self, video: Video, spec: ObservationSpec) -> npt.NDArray[np.float32]:
        """The Pensieve state matrix, ``float32 [B, 6, W]``."""
        b, h = self.quality_history.shape
        width = spec.width(video)
        state = np.zeros((b, N_STATE_ROWS, width), dtype=np.float32)
        cols = slice(width - h, width)
        valid = np.arange(h)[None, :] >= (h - self.n_history)[:, None]
        quality_h, buffer_h, bytes_h = self.quality_history, self.buffer_s_history, self.chunk_bytes_history
        delay_h, remaining_h = self.delay_ms_history, self.remaining_history
        if spec.history_padding is HistoryPadding.oldest:
            # every column before the first valid one repeats it (rows with no history stay all-invalid)
            oldest = np.minimum(np.maximum(np.arange(h)[None, :], (h - self.n_history)[:, None]), h - 1)
            quality_h, remaining_h = (np.take_along_axis(x, oldest, axis=1) for x in (quality_h, remaining_h))
            buffer_h, bytes_h, delay_h = (np.take_along_axis(x, oldest, axis=1) for x in (buffer_h, bytes_h, delay_h))
            valid = (self.n_history > 0)[:, None] & np.ones((1, h), dtype=bool)
        top_kbps = float(video.bitrates_kbps[-1])
        ladder = np.asarray(video.bitrates_kbps, dtype=np.float64)
        state[:, 0, cols] = np.where(valid, ladder[quality_h] / top_kbps, 0.0)
        state[:, 1, cols] = buffer_h / spec.buffer_norm_s  # zero where no chunk was (the histories start at zero)
        with np.errstate(divide="ignore", invalid="ignore"):
            kb_per_ms = np.where(valid, bytes_h / delay_h / BYTES_PER_KB, 0.0)
        if spec.history_padding is HistoryPadding.prior:
            prior_kb_per_ms = self.prior_mbps * BITS_PER_MBIT / BITS_PER_BYTE / MS_PER_S / BYTES_PER_KB
            kb_per_ms = np.where(valid, kb_per_ms, prior_kb_per_ms[:, None])
        state[:, 2, cols] = kb_per_ms
        state[:, 3, cols] = delay_h / MS_PER_S / spec.buffer_norm_s
        state[:, 4, : video.n_levels] = self.next_chunk_bytes / BYTES_PER_MB
        cap = float(spec.remaining_cap_chunks)
        state[:, 5, cols] = np.where(valid, np.minimum(remaining_h, cap) / cap, 0.0)
        return state


class ObservationBuilder:
    """Keeps the observation history of B sessions and updates it from `ChunkResult`s."""

    def __init__(self, n_sessions: int, video: Video, spec: ObservationSpec | None = None) -> None:
        self.video = video
        self.spec = spec if spec is not None else ObservationSpec()
        b, h = n_sessions, self.spec.history_len
        self.n_sessions = n_sessions
        self._last_quality = np.zeros(b, dtype=np.int64)
        self._buffer_s = np.zeros(b)
        self._chunk_index = np.zeros(b, dtype=np.int64)
        self._remaining = np.full(b, video.n_chunks, dtype=np.int64)
        self._next_bytes = np.tile(video.chunk_bytes[:, 0], (b, 1))
        self._n_history = np.zeros(b, dtype=np.int64)
        self._quality_h = np.zeros((b, h), dtype=np.int64)
        self._buffer_h = np.zeros((b, h))
        self._bytes_h = np.zeros((b, h))
        self._delay_h = np.zeros((b, h))
        self._remaining_h = np.zeros((b, h), dtype=np.int64)
        self._prior_mbps = np.zeros(b)

    def reset(self, mask: npt.ArrayLike | None = None) -> None:
        """Forget the history of all sessions, or of those in the boolean ``mask``."""
        rows = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        self._last_quality[rows] = 0
        self._buffer_s[rows] = 0.0
        self._chunk_index[rows] = 0
        self._remaining[rows] = self.video.n_chunks
        self._next_bytes[rows] = self.video.chunk_bytes[:, 0]
        self._n_history[rows] = 0
        self._prior_mbps[rows] = 0.0
        for arr in (self._quality_h, self._buffer_h, self._bytes_h, self._delay_h, self._remaining_h):
            arr[rows] = 0

    def update(self, result: ChunkResult) -> None:
        """Append the chunks of ``result``'s active sessions (numpy results or torch tensors)."""
        get = _host(result)
        active = get(result.active).astype(bool)
        if active.shape != (self.n_sessions,):
            raise ValueError(f"result has {active.shape[0]} sessions, the builder {self.n_sessions}")
        rows = slice(None) if active.all() else active
        self.push(
            rows,
            quality=get(result.quality),
            buffer_s=get(result.buffer_s),
            chunk_bytes=get(result.chunk_bytes),
            delay_ms=get(result.delay_ms),
            chunk_index=get(result.chunk_index),
            chunks_remaining=get(result.chunks_remaining),
            next_chunk_bytes=get(result.next_chunk_bytes),
            prior_mbps=get(result.prior_mbps),
        )

    def push(
        self,
        rows: slice | npt.NDArray[np.bool_] | npt.NDArray[np.int64],
        *,
        quality: npt.ArrayLike,
        buffer_s: npt.ArrayLike,
        chunk_bytes: npt.ArrayLike,
        delay_ms: npt.ArrayLike,
        chunk_index: npt.ArrayLike,
        chunks_remaining: npt.ArrayLike,
        next_chunk_bytes: npt.ArrayLike,
        prior_mbps: npt.ArrayLike | None = None,
    ) -> None:
        """Append one fetched chunk per selected session (arrays over all B sessions, or over ``rows``).

        This is the single entry point for any source of chunk reports (simulator or real players).
        ``prior_mbps``, where given, replaces the sessions' throughput prior (`Observation.prior_mbps`).
        """

        def pick(x: npt.ArrayLike) -> npt.NDArray[np.generic]:
            arr = np.asarray(x)
            return arr[rows] if arr.shape[:1] == (self.n_sessions,) and not isinstance(rows, slice) else arr

        for hist, value in (
            (self._quality_h, quality),
            (self._buffer_h, buffer_s),
            (self._bytes_h, chunk_bytes),
            (self._delay_h, delay_ms),
            (self._remaining_h, chunks_remaining),
        ):
            block = hist[rows]
            block[:, :-1] = block[:, 1:]
            block[:, -1] = pick(value)
            hist[rows] = block
        self._n_history[rows] = np.minimum(self._n_history[rows] + 1, self.spec.history_len)
        self._last_quality[rows] = pick(quality)
        self._buffer_s[rows] = pick(buffer_s)
        self._chunk_index[rows] = np.asarray(pick(chunk_index)) + 1
        self._remaining[rows] = pick(chunks_remaining)
        self._next_bytes[rows] = pick(next_chunk_bytes)
        if prior_mbps is not None:
            self._prior_mbps[rows] = pick(prior_mbps)

    def set_prior(self, rows: slice | npt.NDArray[np.bool_] | npt.NDArray[np.int64], prior_mbps: npt.ArrayLike) -> None:
        """Set the throughput prior of the selected sessions (Mbit/s; 0 = none), e.g. before their first chunk."""
        value = np.asarray(prior_mbps, dtype=np.float64)
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise ValueError("prior_mbps must be finite and >= 0")
        self._prior_mbps[rows] = value

    def observation(self) -> Observation:
        """An immutable snapshot of every session's current history."""
        return Observation(
            last_quality=self._last_quality.copy(),
            buffer_s=self._buffer_s.copy(),
            chunk_index=self._chunk_index.copy(),
            chunks_remaining=self._remaining.copy(),
            next_chunk_bytes=self._next_bytes.copy(),
            n_history=self._n_history.copy(),
            quality_history=self._quality_h.copy(),
            buffer_s_history=self._buffer_h.copy(),
            chunk_bytes_history=self._bytes_h.copy(),
            delay_ms_history=self._delay_h.copy(),
            remaining_history=self._remaining_h.copy(),
            prior_mbps=self._prior_mbps.copy(),
        )

    def state(self) -> npt.NDArray[np.float32]:
        """The Pensieve state matrix of every session, ``float32 [B, 6, W]``."""
        return self.observation().to_state(self.video, self.spec)


def _host(result: ChunkResult) -> Callable[[Any], npt.NDArray[Any]]:
    """A converter from the result's array type (numpy or torch) to numpy."""
    if isinstance(result.active, np.ndarray):
        return np.asarray

    def to_numpy(x: Any) -> npt.NDArray[Any]:
        return np.asarray(x.detach().cpu().numpy())

    return to_numpy
