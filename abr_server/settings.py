"""Server settings: one pydantic-settings class, read from ``ABR_*`` environment variables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from simulator.link import LinkConfig

#: Any page may call the player endpoints (they carry no credentials): the default.
ANY_ORIGIN = "*"
#: The name of the video set by ``video``; the others are named in ``videos``.
DEFAULT_VIDEO = "default"
VIDEO_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def _json_or_parts(value: str, opener: str, what: str) -> object:
    """``value`` parsed as JSON if it starts with ``opener``, else its comma-separated parts."""
    text = value.strip()
    if text.startswith(opener):
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"not {what}: {text!r}") from None
    return [part.strip() for part in text.split(",") if part.strip()]


class Settings(BaseSettings):
    """Everything the service can be told; ``ABR_DEVICE=cuda`` etc. override the defaults."""

    model_config = SettingsConfigDict(env_prefix="ABR_", extra="ignore")

    device: str = Field("auto", description="auto, cpu or cuda: where inference runs.")
    models_dir: Path | None = Field(
        None, description="Model registry (one checkpoint folder per version); unset: the shipped default model."
    )
    watch_interval_s: float = Field(0.0, ge=0, description="Poll the registry for a new version this often (0: off).")
    video: str = Field("builtin", description="'builtin' or a folder of video_size_N files: the default video.")
    videos: Annotated[dict[str, str], NoDecode] = Field(
        {},
        description="More videos served by name: 'NAME=FOLDER,NAME=FOLDER' or a JSON object; a report names its "
        "video (the v1 API's 'video' field), else it plays the default video.",
    )
    ladder_fallback_policy: str = Field(
        "robustmpc", description="Decides for videos whose ladder the served model was not trained on."
    )
    policy: str = Field("learned", description="'learned' (the active model) or a classic policy spec (bba, rb, ...).")
    ab_policy: str | None = Field(None, description="Classic policy for the A/B share of sessions.")
    ab_percent: float = Field(0.0, ge=0, le=100, description="Share of sessions (by session id hash) on ab_policy.")
    fallback_policy: Literal["bba", "rb"] = Field("bba", description="Answers when the model fails or is late.")
    max_batch: int = Field(256, ge=1, description="Largest micro-batch of decisions in one forward pass.")
    max_wait_ms: float = Field(
        0.0, ge=0, description="Longest a decision waits for others to batch with (0: batch what is queued)."
    )
    inference_thread: bool | None = Field(
        None,
        description="Run forward passes on a thread (true) or inline in the event loop (false); "
        "unset: a thread on CUDA, inline on CPU. Only a thread lets the timeout cut off a model that hangs.",
    )
    cuda_graphs: bool = Field(
        True, description="On CUDA, run forward passes as captured CUDA graphs (one launch instead of several)."
    )
    torch_threads: int = Field(1, ge=0, description="torch CPU threads for inference (0: torch's default).")
    inference_timeout_ms: float = Field(200.0, gt=0, description="Later than this, the fallback answers.")
    max_sessions: int = Field(100_000, ge=1, description="Sessions kept; the least recently used goes first.")
    session_ttl_s: float = Field(600.0, gt=0, description="Sessions idle this long are forgotten.")
    telemetry_db: Path | None = Field(Path("abr-telemetry.sqlite"), description="SQLite telemetry (None: off).")
    telemetry_flush_interval_s: float = Field(
        0.1, gt=0, le=3600,
        description="Reports are journaled before the answer and moved into the database this often.",
    )  # fmt: skip
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin routes (unset: admin off).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [ANY_ORIGIN],
        description="Origins whose pages may call the player endpoints (decisions, the Pensieve API, /player, "
        "/media): '*' (any: the default), origins separated by commas, or a JSON list; empty: none. Admin routes "
        "never answer cross-origin requests.",
    )
    fast_path: bool = Field(
        True, description="Answer the v1 decision endpoint in a lean ASGI layer (false: through FastAPI's router)."
    )
    max_body_bytes: int = Field(64 * 1024, ge=256, description="Larger request bodies are refused (413).")
    media_dir: Path | None = Field(None, description="A DASH asset folder served at /media (`abr media make`).")
    link_trace: Path | None = Field(
        None, description="Pace /media through this throughput trace (one link shared by all connections)."
    )
    link_delay_ms: float | None = Field(
        None, ge=0, le=60_000,
        description="Delay before each /media response (the path's RTT); default: the simulator's RTT (80 ms) "
        "with link_trace, 0 without.",
    )  # fmt: skip
    player_vendor_dir: Path | None = Field(
        None, description="node_modules holding dashjs and chart.js for /player (default: the package's own)."
    )

    @field_validator(
        "models_dir", "telemetry_db", "admin_token", "ab_policy", "inference_thread", "media_dir", "link_trace",
        "player_vendor_dir", mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``ABR_TELEMETRY_DB=`` (empty) means off, not the current directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("videos", mode="before")
    @classmethod
    def _videos_from_text(cls, value: object) -> object:
        """``a=runs/asset-a, b=../sizes`` or a JSON object."""
        if not isinstance(value, str):
            return value
        parts = _json_or_parts(value, "{", "a JSON object of videos")
        if not isinstance(parts, list):
            return parts
        pairs = {}
        for part in parts:
            name, sep, folder = part.partition("=")
            if not sep or not folder.strip():
                raise ValueError(f"{part!r} is not NAME=FOLDER")
            pairs[name.strip()] = folder.strip()
        return pairs

    @field_validator("videos")
    @classmethod
    def _video_names(cls, videos: dict[str, str]) -> dict[str, str]:
        for name in videos:
            if not VIDEO_NAME.fullmatch(name) or name == DEFAULT_VIDEO:
                raise ValueError(f"video name {name!r}: 1-64 letters, digits, '.', '_' or '-', not {DEFAULT_VIDEO!r}")
        return videos

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_from_text(cls, value: object) -> object:
        """``*``, ``https://a.example, http://b:8080`` or a JSON list."""
        if not isinstance(value, str):
            return value
        return _json_or_parts(value, "[", "a JSON list of origins")

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        cleaned = [origin.rstrip("/") if origin != ANY_ORIGIN else origin for origin in origins]
        for origin in cleaned:
            if origin != ANY_ORIGIN and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (http[s]://host[:port], no path) or '*'")
        return cleaned

    @model_validator(mode="after")
    def _link_needs_media(self) -> Settings:
        if self.link_trace is not None and self.media_dir is None:
            raise ValueError("link_trace paces /media: set media_dir too")
        return self

    @property
    def media_delay_ms(self) -> float:
        """The effective delay before each /media response."""
        if self.link_delay_ms is not None:
            return self.link_delay_ms
        return LinkConfig().rtt_ms if self.link_trace is not None else 0.0
