"""Start a decision server as a local process, wait until it is ready, and stop it cleanly.

`local_server` runs ``python -m abr_server`` on a free loopback port with the given settings (``ABR_*``
environment variables), waits until ``/readyz`` answers 200, yields its URL and process, and at the end
stops it gracefully (SIGTERM: uvicorn stops its workers and the service commits queued telemetry), then
kills whatever is left of its process group. Emulation, the load benchmark, the fleet tests and the
retraining benchmarks all start their servers here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from abr_server.settings import Settings

LOOPBACK = "127.0.0.1"
#: How often readiness is polled while the server starts.
POLL_S = 0.1
#: Characters of the log's end quoted when the server fails to start.
LOG_TAIL_CHARS = 2000


class ServerStartError(RuntimeError):
    """The server exited or never became ready; the message names its log."""


class RunningServer(NamedTuple):
    """A server started by `local_server`: its base URL and process."""

    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Mapping[str, object]) -> dict[str, str | None]:
    """``ABR_*`` variables for ``settings`` (keys: `Settings` field names); None means the field's default.

    Raises ValueError for a name `Settings` does not have.
    """
    unknown = sorted(set(settings) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown server settings {unknown}; known: {sorted(Settings.model_fields)}")
    env: dict[str, str | None] = {}
    for name, value in settings.items():
        key = f"ABR_{name.upper()}"
        if value is None:
            env[key] = None
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list | tuple | dict):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    return env


@contextmanager
def local_server(
    env: Mapping[str, str] | None = None,
    *,
    settings: Mapping[str, object] | None = None,
    workers: int = 1,
    log_path: Path | None = None,
    log_level: str = "warning",
    startup_s: float = 60.0,
    stop_s: float = 30.0,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """Run the server on a free loopback port until the block ends; yields its URL and process.

    ``env`` adds environment variables (e.g. ``ABR_TELEMETRY_DB``); ``settings`` sets `Settings` fields by
    name (applied after ``env``; None restores a field's default). The server's output goes to
    ``log_path`` (default: this process's stdout and stderr). Raises `ServerStartError` if the server exits
    or is not ready within ``startup_s``. At the end it gets ``stop_s`` to stop gracefully before it and
    its process group are killed, so no worker of ``workers > 1`` outlives it. ``port``: listen there
    (default: a free one), e.g. to restart a server where its clients reconnect.
    """
    child_env = {**os.environ, **(env or {})}
    for key, value in settings_env(settings or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    port = free_port() if port is None else port
    cmd = [sys.executable, "-m", "abr_server", "--host", LOOPBACK, "--port", str(port), "--workers", str(workers),
           "--log-level", log_level]  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    with contextlib.ExitStack() as stack:
        log: IO[bytes] | None = stack.enter_context(log_path.open("wb")) if log_path is not None else None
        # Its own process group: with several workers, uvicorn's worker processes go with it at the end.
        proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                start_new_session=True)  # fmt: skip
        try:
            _wait_ready(url, proc, startup_s, log_path)
            yield RunningServer(url, proc)
        finally:
            _stop(proc, stop_s)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], startup_s: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + startup_s
    where = f"log: {log_path}" if log_path is not None else "its output is above"
    while True:
        if proc.poll() is not None:
            tail = f"\n{log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]}" if log_path is not None else ""
            raise ServerStartError(f"the server for {url} exited with code {proc.returncode} before it was ready "
                                   f"({where}){tail}")  # fmt: skip
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or not ready (503)
        if time.monotonic() > deadline:
            raise ServerStartError(f"the server at {url} was not ready after {startup_s:.0f} s ({where})")
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen[bytes], stop_s: float) -> None:
    if proc.poll() is None:
        proc.terminate()  # a graceful stop: uvicorn stops its workers and the service commits queued telemetry
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the server left behind (workers of a killed master)
