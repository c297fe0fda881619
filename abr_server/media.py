"""The segment server: a DASH/HLS asset folder over HTTP, optionally paced by a throughput trace.

Mounted at ``/media`` on the decision server (one origin for page, player, decisions and segments, so
the browser's resource timing is complete), or run alone by ``abr media serve``. GET and HEAD only;
paths are resolved inside the folder (no ``..``, no hidden files, no links out). Every response waits
``delay_ms`` (the path's round trip); with a `ShapedLink` its body then leaves in slices paced by it.
Responses are never cached: every emulated session must fetch its segments through the link.
"""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path

from starlette.types import Receive, Scope, Send

from abr_common.units import MS_PER_S
from abr_server.shaping import SLICE_BYTES, ShapedLink

CONTENT_TYPES = {
    ".mpd": "application/dash+xml",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".json": "application/json",
}


class MediaApp:
    """ASGI app serving files under ``root``; paced by ``link`` when one is given."""

    def __init__(self, root: Path, link: ShapedLink | None = None, *, delay_ms: float = 0.0) -> None:
        if not root.is_dir():
            raise ValueError(f"media folder {root}: no such folder")
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.root = root.resolve()
        self.link, self.delay_ms = link, delay_ms
        self.requests = 0

    def resolve(self, path: str) -> Path | None:
        """The file for URL path ``path`` (relative to the mount), or None if there is none to serve."""
        parts = [p for p in path.split("/") if p]
        if not parts or any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        candidate = self.root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_file() or not resolved.is_relative_to(self.root):
            return None
        return resolved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
            return
        file = self.resolve(_route_path(scope))
        if file is None:
            await _plain(send, 404, b"not found")
            return
        data = file.read_bytes()
        self.requests += 1
        content_type = (
            CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        )
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-store"),
            (b"timing-allow-origin", b"*"),
            (b"access-control-allow-origin", b"*"),
        ]
        if self.link is not None:
            self.link.start()  # the trace's clock runs from the first request
        if self.delay_ms > 0:
            await asyncio.sleep(self.delay_ms / MS_PER_S)  # the path's round trip before the first byte
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        for offset in range(0, len(data), SLICE_BYTES):
            piece = data[offset : offset + SLICE_BYTES]
            if self.link is not None:
                await self.link.transmit(len(piece))
            await send({"type": "http.response.body", "body": piece, "more_body": offset + SLICE_BYTES < len(data)})
        if not data:
            await send({"type": "http.response.body", "body": b""})


def _route_path(scope: Scope) -> str:
    """The request path below the mount point (Starlette keeps the full path and sets ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
