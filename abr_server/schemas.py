"""Request and response models of both APIs (validated: finite, in range, consistent)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from abr_common.units import BITS_PER_BYTE, MS_PER_S

#: Upper bounds that keep a hostile or broken client from feeding absurd numbers into a session.
MAX_CHUNK_BYTES = 1 << 31
MAX_TIME_MS = 1e15
MAX_BUFFER_S = 3600.0


class ChunkReport(BaseModel):
    """What the player reports after downloading a chunk (v1 API; CMCD names accepted where they exist)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    index: int = Field(ge=0, lt=100_000, description="Index of the chunk just downloaded (0-based).")
    quality: int = Field(ge=0, lt=64, description="Ladder level of that chunk.")
    bytes: int = Field(gt=0, le=MAX_CHUNK_BYTES, description="Its size in bytes.")
    request_start_ms: float | None = Field(None, ge=0, le=MAX_TIME_MS, description="When its request was sent.")
    first_byte_ms: float | None = Field(None, ge=0, le=MAX_TIME_MS, description="When its first byte arrived.")
    end_ms: float | None = Field(None, ge=0, le=MAX_TIME_MS, description="When its last byte arrived.")
    buffer_s: float | None = Field(None, ge=0, le=MAX_BUFFER_S, description="Buffer level after it, seconds.")
    bl: float | None = Field(None, ge=0, le=MAX_BUFFER_S * 1000, description="CMCD buffer length, ms.")
    mtp: float | None = Field(None, gt=0, le=1e8, description="CMCD measured throughput, kbit/s (if no timings).")
    rebuffer_ms: float = Field(0.0, ge=0, le=MAX_TIME_MS, description="Cumulative stall time of the session, ms.")
    next_chunk_bytes: list[int] | None = Field(
        None, max_length=64, description="Sizes of the next chunk at every level (default: the served video's)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.request_start_ms is not None and self.end_ms is not None:
            if self.end_ms < self.request_start_ms:
                raise ValueError("end_ms is before request_start_ms")
            if self.first_byte_ms is not None and not self.request_start_ms <= self.first_byte_ms <= self.end_ms:
                raise ValueError("first_byte_ms is outside [request_start_ms, end_ms]")
        elif self.mtp is None:
            raise ValueError("give request_start_ms and end_ms, or mtp (measured throughput)")
        if self.buffer_s is None and self.bl is None:
            raise ValueError("give buffer_s (or CMCD bl)")
        if self.next_chunk_bytes is not None and any(b <= 0 or b > MAX_CHUNK_BYTES for b in self.next_chunk_bytes):
            raise ValueError("next_chunk_bytes must be positive sizes")
        return self

    @property
    def buffer_level_s(self) -> float:
        """Buffer after the chunk, seconds (from buffer_s or CMCD bl)."""
        return self.buffer_s if self.buffer_s is not None else float(self.bl or 0.0) / MS_PER_S

    @property
    def delay_ms(self) -> float:
        """Download time, ms: end - start, or bytes / measured throughput; never below 1 ms."""
        if self.request_start_ms is not None and self.end_ms is not None:
            return max(self.end_ms - self.request_start_ms, 1.0)
        assert self.mtp is not None
        return max(self.bytes * BITS_PER_BYTE / self.mtp, 1.0)  # bits / (kbit/s) = ms


class Decision(BaseModel):
    """The level of the next chunk."""

    quality: int = Field(description="Ladder level for chunk for_index.")
    bitrate_kbps: int
    for_index: int = Field(description="The chunk this decision is for.")
    policy: str = Field(description="Who decided: learned, a classic policy, or fallback:NAME.")
    model_version: str | None = Field(description="Version of the model that decided (None for classic rules).")
    end_of_video: bool = Field(False, description="The reported chunk was the last: nothing more to decide.")


class PensieveReport(BaseModel):
    """The JSON body of the Pensieve modified dash.js client."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    lastquality: int = Field(ge=0, lt=64)
    buffer: float = Field(ge=0, le=MAX_BUFFER_S)
    RebufferTime: float = Field(0.0, ge=0, le=MAX_TIME_MS)
    lastRequest: int = Field(ge=0, lt=100_000)
    lastChunkStartTime: float = Field(ge=0, le=MAX_TIME_MS)
    lastChunkFinishTime: float = Field(ge=0, le=MAX_TIME_MS)
    lastChunkSize: int = Field(gt=0, le=MAX_CHUNK_BYTES)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.lastChunkFinishTime < self.lastChunkStartTime:
            raise ValueError("lastChunkFinishTime is before lastChunkStartTime")
        return self

    def to_report(self) -> ChunkReport:
        """The same report in v1 terms (the Pensieve client counts requests from 1)."""
        return ChunkReport(
            index=max(self.lastRequest - 1, 0), quality=self.lastquality, bytes=self.lastChunkSize,
            request_start_ms=self.lastChunkStartTime, end_ms=self.lastChunkFinishTime,
            buffer_s=self.buffer, rebuffer_ms=self.RebufferTime,
        )  # fmt: skip
