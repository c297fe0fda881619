"""The videos one server serves, by name, and which of them the learned policy can decide for.

A model is trained for one ladder (bitrates and chunk duration, in its checkpoint's metadata); every
version the registry serves is validated against the default video. A video with another ladder is
never given the model's levels: its sessions are decided by ``ladder_fallback_policy`` (robustMPC by
default), and the answer and ``/metrics`` say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from abr_server.sessions import ReportError
from abr_server.settings import DEFAULT_VIDEO, Settings
from simulator.video import Video, load_video


@dataclass(frozen=True)
class Catalogue:
    """Videos by name; ``default`` answers reports that name none."""

    videos: dict[str, Video]

    @classmethod
    def load(cls, settings: Settings, default: Video | None = None) -> Catalogue:
        """The default video (``settings.video``, or ``default`` if given) and every one in ``settings.videos``."""
        videos = {DEFAULT_VIDEO: default if default is not None else load_video(settings.video)}
        for name, folder in settings.videos.items():
            try:
                videos[name] = load_video(folder)
            except ValueError as err:
                raise ValueError(f"videos {name!r}: {err}") from None
        return cls(videos)

    @property
    def default(self) -> Video:
        return self.videos[DEFAULT_VIDEO]

    def get(self, name: str | None) -> tuple[str, Video]:
        """The video named ``name`` (None: the default); `ReportError` naming the served ones if unknown."""
        key = DEFAULT_VIDEO if name is None else name
        video = self.videos.get(key)
        if video is None:
            raise ReportError("video", f"no video {name!r} on this server (served: {', '.join(sorted(self.videos))})")
        return key, video

    def learned_fits(self, name: str) -> bool:
        """The served models (trained for the default video's ladder) can decide for video ``name``."""
        video, default = self.videos[name], self.default
        return (
            tuple(video.bitrates_kbps) == tuple(default.bitrates_kbps)
            and video.chunk_duration_s == default.chunk_duration_s
        )
