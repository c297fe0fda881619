"""Run the service under uvicorn: the one place that starts ``abr_server.main:create_app``.

Used by ``abr serve`` and by ``python -m abr_server``. Settings come from ``ABR_*`` environment variables
(`abr_server.settings.Settings`), so every worker process of ``workers > 1`` builds the same ones.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from abr_server.settings import Settings

#: The app factory uvicorn imports (in each worker process).
APP_FACTORY = "abr_server.main:create_app"


def preflight(settings: Settings, host: str, port: int) -> None:
    """Check what start-up needs, creating nothing; ValueError with one line naming the setting if not.

    The video, device, policies, files and the port are checked here rather than in the app's start-up,
    where a failure would be a traceback (once per worker) and could leave a telemetry database behind.
    """
    from policy.base import make_policy
    from policy.learning.ppo import resolve_device
    from simulator.video import load_video

    try:
        load_video(settings.video)
    except ValueError as err:
        raise ValueError(f"video {settings.video!r}: {err}") from None
    try:
        resolve_device(settings.device)
    except ValueError as err:
        raise ValueError(f"device: {str(err).replace('--device ', '')}") from None
    for name, folder in settings.videos.items():
        try:
            load_video(folder)
        except ValueError as err:
            raise ValueError(f"videos {name!r}: {err}") from None
    for name in ("policy", "ab_policy", "fallback_policy", "ladder_fallback_policy"):
        spec = getattr(settings, name)
        if spec is not None and spec != "learned":
            try:
                make_policy(spec)
            except ValueError as err:
                raise ValueError(f"{name} {spec!r}: {err}") from None
    if settings.models_dir is not None and not settings.models_dir.is_dir():
        raise ValueError(f"models_dir {settings.models_dir}: no such folder")
    if settings.media_dir is not None and not settings.media_dir.is_dir():
        raise ValueError(f"media_dir {settings.media_dir}: no such folder")
    if settings.link_trace is not None and not settings.link_trace.is_file():
        raise ValueError(f"link_trace {settings.link_trace}: no such file")
    if settings.telemetry_db is not None:
        _check_telemetry_db(settings.telemetry_db)
    _check_port(host, port)


def _check_telemetry_db(path: Path) -> None:
    """The database can be opened (an existing one is SQLite) or created (its folder is writable)."""
    if path.exists():
        if path.is_dir():
            raise ValueError(f"telemetry_db {path}: is a folder, expected a file")
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as err:
            raise ValueError(f"telemetry_db {path}: not a usable SQLite database ({err})") from None
        if not os.access(path, os.W_OK):
            raise ValueError(f"telemetry_db {path}: not writable")
        return
    folder = path.absolute().parent
    while not folder.exists():  # start-up creates the missing folders
        folder = folder.parent
    try:  # a real attempt: permissions alone do not tell (root, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"telemetry_db {path}: cannot be created in {folder} ({err.strerror})") from None


def _check_port(host: str, port: int) -> None:
    """``host:port`` can be listened on now (with the address reuse uvicorn uses)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"host {host!r}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with contextlib.closing(socket.socket(family, kind, proto)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise ValueError(f"port {port} on {host}: {err.strerror} (is another server listening there?)") from None


def run_server(host: str = "127.0.0.1", port: int = 8333, workers: int = 1, log_level: str = "warning") -> None:
    """Serve until stopped (SIGINT or SIGTERM: a graceful stop); JSON-lines logs on stderr."""
    import uvicorn

    from abr_server.logs import log_config

    # on stdout: stderr carries only JSON-lines logs
    print(f"listening on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}); Ctrl-C stops", flush=True)

    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                access_log=False, log_config=log_config(log_level))  # fmt: skip
