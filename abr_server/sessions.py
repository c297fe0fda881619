"""Per-session history kept by the server: bounded, expiring, one request at a time per session.

Each session has its own one-row `ObservationBuilder`, the same code the simulator uses, so the model
sees the numbers it was trained on. Sessions are kept in least-recently-used order: beyond
``max_sessions`` the oldest goes, and sessions idle for ``ttl_s`` are forgotten.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from abr_common.units import KBIT_PER_MBIT
from abr_server.schemas import ChunkReport, Decision
from abr_server.settings import DEFAULT_VIDEO
from policy.base import Policy
from simulator.observation import Observation, ObservationBuilder, ObservationSpec
from simulator.video import Video

#: The server sweeps idle sessions at least this often.
MAX_SWEEP_INTERVAL_S = 60.0


class ReportError(ValueError):
    """A report that does not fit the served video or the session (answered with 422)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name, self.message = field_name, message


@dataclass
class Session:
    """One player's recent history."""

    session_id: str
    builder: ObservationBuilder
    policy: str
    video: Video  # the video this session plays (its ladder, sizes and length)
    video_name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    classic: Policy | None = None  # a classic rule's own state for this session
    last_seen_s: float = 0.0
    last_index: int = -1
    last_report: ChunkReport | None = None
    last_decision: Decision | None = None  # the answer to last_report, given again if it is retried
    chunks: int = 0

    def push(self, report: ChunkReport) -> None:
        """Append the reported chunk (validated against the session's video)."""
        video = self.video
        next_bytes = check_report(report, video)
        next_index = report.index + 1
        self.builder.push(
            slice(None),
            quality=np.array([report.quality]),
            buffer_s=np.array([report.buffer_level_s]),
            chunk_bytes=np.array([float(report.bytes)]),
            delay_ms=np.array([report.delay_ms]),
            chunk_index=np.array([report.index]),
            chunks_remaining=np.array([video.n_chunks - next_index]),
            next_chunk_bytes=next_bytes[None, :],
        )
        if report.prior_throughput_kbps is not None:
            self.builder.set_prior(slice(None), [report.prior_throughput_kbps / KBIT_PER_MBIT])
        self.last_index = report.index
        self.chunks += 1

    def observation(self) -> Observation:
        """The session's current observation (batch of one)."""
        return self.builder.observation()


def check_report(report: ChunkReport, video: Video) -> np.ndarray:
    """The next chunk's size at each level, once ``report`` is known to fit ``video`` (else `ReportError`)."""
    if report.quality >= video.n_levels:
        raise ReportError("quality", f"level {report.quality} is not on the ladder (0..{video.n_levels - 1})")
    if report.index >= video.n_chunks:
        raise ReportError("index", f"chunk {report.index} is past the video's last chunk ({video.n_chunks - 1})")
    next_index = report.index + 1
    if report.next_chunk_bytes is not None:
        if len(report.next_chunk_bytes) != video.n_levels:
            raise ReportError("next_chunk_bytes", f"needs {video.n_levels} sizes, got {len(report.next_chunk_bytes)}")
        return np.asarray(report.next_chunk_bytes, dtype=np.int64)
    if next_index < video.n_chunks:
        return video.chunk_bytes[:, next_index].astype(np.int64)
    return np.zeros(video.n_levels, dtype=np.int64)


class SessionStore:
    """Sessions by id, least recently used first out, idle ones expired."""

    def __init__(self, video: Video, spec: ObservationSpec, max_sessions: int, ttl_s: float) -> None:
        self.video, self.spec = video, spec
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def get(
        self, session_id: str, policy: str, now_s: float | None = None, video: tuple[str, Video] | None = None
    ) -> Session:
        """The session ``session_id``, created (with ``policy``, playing ``video``: name and video, default the
        store's) if new or expired; `ReportError` if it exists and plays another video."""
        now_s = time.monotonic() if now_s is None else now_s
        name, played = video if video is not None else (DEFAULT_VIDEO, self.video)
        session = self._sessions.get(session_id)
        if session is not None and now_s - session.last_seen_s > self.ttl_s:
            del self._sessions[session_id]
            self.expired += 1
            session = None
        if session is not None and session.video_name != name:
            raise ReportError("video", f"session {session_id!r} plays {session.video_name!r}, not {name!r}")
        if session is None:
            session = Session(session_id, ObservationBuilder(1, played, self.spec), policy, played, name)
            self._sessions[session_id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
                self.evicted += 1
        else:
            self._sessions.move_to_end(session_id)
        session.last_seen_s = now_s
        return session

    def peek(self, session_id: str) -> Session | None:
        """The session ``session_id`` if it is kept (not touched: its age and order stay)."""
        return self._sessions.get(session_id)

    def drop(self, session_id: str) -> bool:
        """Forget a session (e.g. after its last chunk); True if it existed."""
        return self._sessions.pop(session_id, None) is not None

    def sweep(self, now_s: float | None = None) -> int:
        """Forget every session idle longer than the TTL; returns how many.

        Sessions are kept least recently used first, so this stops at the first one still fresh: its cost
        is the number of sessions it forgets, not the number kept.
        """
        now_s = time.monotonic() if now_s is None else now_s
        forgotten = 0
        while self._sessions:
            session = next(iter(self._sessions.values()))
            if now_s - session.last_seen_s <= self.ttl_s:
                break
            self._sessions.popitem(last=False)
            forgotten += 1
        self.expired += forgotten
        return forgotten


def sweep_interval_s(ttl_s: float) -> float:
    """How often the server sweeps idle sessions: a quarter of the TTL, between 1 s and `MAX_SWEEP_INTERVAL_S`."""
    return min(max(ttl_s / 4, 1.0), MAX_SWEEP_INTERVAL_S)
