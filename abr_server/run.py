"""Run the service under uvicorn: the one place that starts ``abr_server.main:create_app``.

Used by ``abr serve`` and by ``python -m abr_server``. Settings come from ``ABR_*`` environment variables
(`abr_server.settings.Settings`), so every worker process of ``workers > 1`` builds the same ones.
"""

from __future__ import annotations

#: The app factory uvicorn imports (in each worker process).
APP_FACTORY = "abr_server.main:create_app"


def run_server(host: str = "127.0.0.1", port: int = 8333, workers: int = 1, log_level: str = "warning") -> None:
    """Serve until stopped (SIGINT or SIGTERM: a graceful stop); JSON-lines logs on stderr."""
    import uvicorn

    from abr_server.logs import log_config

    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level=log_level,
                access_log=False, log_config=log_config(log_level))  # fmt: skip
