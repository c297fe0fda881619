"""Request and response models of both APIs (validated: strict types, finite, in range, consistent).

Numbers are strict: an integer field takes a JSON integer (not ``true``, ``"600000"`` or ``6e5``), a
float field takes any JSON number. Every field has physical bounds, and so has what the server derives
from a report (the download's delay and throughput), so that what reaches a session's observation and
the telemetry journal is finite and plausible; a report outside them gets 422 naming the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from abr_common.units import BITS_PER_BYTE, KBIT_PER_MBIT, MS_PER_S
from abr_server.settings import VIDEO_NAME

#: A chunk is at most 2 GiB (a minute of 8K video is a tenth of that).
MAX_CHUNK_BYTES = 1 << 31
#: Timestamps may be on any millisecond clock (``performance.now()``, Unix time) up to this.
MAX_TIME_MS = 1e15
#: The buffer holds at most an hour of video.
MAX_BUFFER_S = 3600.0
#: A download is counted as lasting at least 1 ms (a clock's resolution; a cached chunk takes "0 ms").
MIN_DELAY_MS = 1.0
#: A download that lasts more than an hour is not a report to act on.
MAX_DELAY_MS = 3_600_000.0
#: Measured throughput, kbit/s: at least 1 kbit/s, at most 100 Gbit/s.
MIN_THROUGHPUT_KBPS = 1.0
MAX_THROUGHPUT_KBPS = 1e8
#: A session stalls for at most 30 days in total.
MAX_REBUFFER_MS = 30 * 24 * 3600 * MS_PER_S
#: Chunk indices and ladder levels.
MAX_CHUNKS = 100_000
MAX_LEVELS = 64

ChunkBytes = Annotated[int, Field(gt=0, le=MAX_CHUNK_BYTES)]


def download_problem(chunk_bytes: int, delay_ms: float, names: str) -> str | None:
    """Why a chunk of ``chunk_bytes`` downloaded in ``delay_ms`` is not physical, or None."""
    if not (math.isfinite(delay_ms) and delay_ms <= MAX_DELAY_MS):
        return f"{names}: the download lasts over {MAX_DELAY_MS:.0f} ms (an hour)"
    throughput_kbps = chunk_bytes * BITS_PER_BYTE / delay_ms  # bits per ms are kbit/s
    if not (math.isfinite(throughput_kbps) and throughput_kbps <= MAX_THROUGHPUT_KBPS):
        return f"{names}: the download is faster than {MAX_THROUGHPUT_KBPS / KBIT_PER_MBIT:.0f} Mbit/s"
    return None


class ChunkReport(BaseModel):
    """What the player reports after downloading a chunk (v1 API; CMCD names accepted where they exist)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    index: int = Field(ge=0, lt=MAX_CHUNKS, description="Index of the chunk just downloaded (0-based, < 100000).")
    quality: int = Field(ge=0, lt=MAX_LEVELS, description="Ladder level of that chunk (0-based, < 64).")
    bytes: int = Field(gt=0, le=MAX_CHUNK_BYTES, description="Its size in bytes (1 to 2**31).")
    request_start_ms: float | None = Field(
        None, ge=0, le=MAX_TIME_MS, description="When its request was sent, ms on the player's clock (<= 1e15)."
    )
    first_byte_ms: float | None = Field(
        None, ge=0, le=MAX_TIME_MS, description="When its first byte arrived, ms (same clock)."
    )
    end_ms: float | None = Field(
        None, ge=0, le=MAX_TIME_MS,
        description="When its last byte arrived, ms (same clock). end_ms - request_start_ms is the download's "
        "delay (at least 1 ms, at most an hour; bytes / delay at most 100 Gbit/s).",
    )  # fmt: skip
    buffer_s: float | None = Field(
        None, ge=0, le=MAX_BUFFER_S, description="Buffer level after it, seconds (0 to 3600)."
    )
    bl: float | None = Field(
        None, ge=0, le=MAX_BUFFER_S * MS_PER_S, description="CMCD buffer length, ms (0 to 3600000; if no buffer_s)."
    )
    mtp: float | None = Field(
        None, ge=MIN_THROUGHPUT_KBPS, le=MAX_THROUGHPUT_KBPS,
        description="CMCD measured throughput, kbit/s (1 to 1e8), used if the timings are missing; "
        "bytes / mtp is the delay (at most an hour).",
    )  # fmt: skip
    prior_throughput_kbps: float | None = Field(
        None, ge=0, le=MAX_THROUGHPUT_KBPS,
        description="Throughput the player knew before this session started (its previous video, the manifest, "
        "navigator.connection.downlink), kbit/s; 0 = none. Kept for the session; a model trained with a prior "
        "(history padding 'prior') reads it until the session's own chunks fill its history.",
    )  # fmt: skip
    rebuffer_ms: float = Field(
        0.0, ge=0, le=MAX_REBUFFER_MS, description="Cumulative stall time of the session, ms (at most 30 days)."
    )
    next_chunk_bytes: list[ChunkBytes] | None = Field(
        None, min_length=1, max_length=MAX_LEVELS,
        description="Sizes in bytes of the next chunk at every ladder level, one per level of the served ladder "
        "(default: the served video's).",
    )  # fmt: skip
    video: str | None = Field(
        None, pattern=f"^{VIDEO_NAME.pattern}$",
        description="The video the session plays, by its name on this server (default: the default video). A "
        "session plays one video.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.request_start_ms is not None and self.end_ms is not None:
            if self.end_ms < self.request_start_ms:
                raise ValueError("end_ms is before request_start_ms")
            if self.first_byte_ms is not None and not self.request_start_ms <= self.first_byte_ms <= self.end_ms:
                raise ValueError("first_byte_ms is outside [request_start_ms, end_ms]")
            names = "bytes, request_start_ms, end_ms"
        elif self.mtp is None:
            raise ValueError("give request_start_ms and end_ms, or mtp (measured throughput)")
        else:
            names = "bytes, mtp"
        if self.buffer_s is None and self.bl is None:
            raise ValueError("give buffer_s (or CMCD bl)")
        problem = download_problem(self.bytes, self.delay_ms, names)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def buffer_level_s(self) -> float:
        """Buffer after the chunk, seconds (from buffer_s or CMCD bl)."""
        return self.buffer_s if self.buffer_s is not None else float(self.bl or 0.0) / MS_PER_S

    @property
    def delay_ms(self) -> float:
        """Download time, ms: end - start, or bytes / measured throughput; never below 1 ms."""
        if self.request_start_ms is not None and self.end_ms is not None:
            return max(self.end_ms - self.request_start_ms, MIN_DELAY_MS)
        assert self.mtp is not None
        return max(self.bytes * BITS_PER_BYTE / self.mtp, MIN_DELAY_MS)  # bits / (kbit/s) = ms

    @property
    def throughput_kbps(self) -> float:
        """The download's throughput, kbit/s."""
        return self.bytes * BITS_PER_BYTE / self.delay_ms


class Decision(BaseModel):
    """The level of the next chunk."""

    quality: int = Field(ge=0, lt=MAX_LEVELS, description="Ladder level for chunk for_index.")
    bitrate_kbps: int = Field(gt=0, description="The bitrate of that level, kbit/s.")
    for_index: int = Field(ge=1, le=MAX_CHUNKS, description="The chunk this decision is for.")
    policy: str = Field(description="Who decided: learned, a classic policy, or fallback:NAME.")
    model_version: str | None = Field(description="Version of the model that decided (None for classic rules).")
    end_of_video: bool = Field(False, description="The reported chunk was the last: nothing more to decide.")
    video: str = Field("default", description="The video the session plays (its ladder gives the bitrate).")


class Problem(BaseModel):
    """An error answer (401, 403, 404, 409, 413, 503): what is wrong, in one line."""

    detail: str


class FieldProblem(BaseModel):
    """One reason a request was refused: where (``loc``, e.g. ``["body", "bytes"]``) and what."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422 answer: every reason the request was refused (FastAPI's shape, input values not echoed)."""

    detail: list[FieldProblem]


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route that may answer ``codes`` (a `ValidationProblem` for 422, else a `Problem`)."""
    return {
        code: {"model": ValidationProblem if code == UNPROCESSABLE else Problem, "description": _PROBLEMS[code]}
        for code in codes
    }


#: The status of a request whose content is invalid.
UNPROCESSABLE = 422
_PROBLEMS = {
    422: "The request is invalid: each reason names the field.",
    401: "Missing or wrong bearer token.",
    403: "Admin routes are disabled (no ABR_ADMIN_TOKEN).",
    404: "No such session or model version.",
    409: "The model version was refused, or there is nothing to roll back to.",
    413: "The request body is larger than ABR_MAX_BODY_BYTES.",
    503: "The server cannot do this now: a file it needs is missing or cannot be written (nothing changed).",
}


class PensieveReport(BaseModel):
    """The JSON body of the Pensieve modified dash.js client."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    lastquality: int = Field(ge=0, lt=MAX_LEVELS, description="Ladder level of the chunk just downloaded.")
    buffer: float = Field(ge=0, le=MAX_BUFFER_S, description="Buffer level after it, seconds (0 to 3600).")
    RebufferTime: float = Field(
        0.0, ge=0, le=MAX_REBUFFER_MS, description="Cumulative stall time, ms (at most 30 days)."
    )
    lastRequest: int = Field(ge=0, lt=MAX_CHUNKS, description="Index of the chunk just downloaded (0 = the first).")
    lastChunkStartTime: float = Field(ge=0, le=MAX_TIME_MS, description="When its request was sent, ms.")
    lastChunkFinishTime: float = Field(
        ge=0, le=MAX_TIME_MS,
        description="When its last byte arrived, ms: the delay, lastChunkFinishTime - lastChunkStartTime, is at "
        "most an hour and lastChunkSize / delay at most 100 Gbit/s.",
    )  # fmt: skip
    lastChunkSize: int = Field(gt=0, le=MAX_CHUNK_BYTES, description="Its size in bytes (1 to 2**31).")
    nextChunkSize: list[ChunkBytes] | int | None = Field(
        None, description="The next chunk's size at each level, lowest first (used when it has one per level; the "
        "client sends 0 after the last chunk).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.lastChunkFinishTime < self.lastChunkStartTime:
            raise ValueError("lastChunkFinishTime is before lastChunkStartTime")
        delay_ms = max(self.lastChunkFinishTime - self.lastChunkStartTime, MIN_DELAY_MS)
        problem = download_problem(
            self.lastChunkSize, delay_ms, "lastChunkSize, lastChunkStartTime, lastChunkFinishTime"
        )
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def has_next_chunk(self) -> bool:
        """The client says its video has a chunk after this one (it sent that chunk's sizes)."""
        return isinstance(self.nextChunkSize, list) and len(self.nextChunkSize) > 0

    def to_report(self, n_levels: int) -> ChunkReport:
        """The same report in v1 terms, for a ladder of ``n_levels``: chunk ``lastRequest`` was downloaded."""
        sizes = self.nextChunkSize if isinstance(self.nextChunkSize, list) else None
        return ChunkReport(
            index=self.lastRequest, quality=self.lastquality, bytes=self.lastChunkSize,
            request_start_ms=self.lastChunkStartTime, end_ms=self.lastChunkFinishTime,
            buffer_s=self.buffer, rebuffer_ms=self.RebufferTime,
            next_chunk_bytes=sizes if sizes is not None and len(sizes) == n_levels else None,
        )  # fmt: skip
