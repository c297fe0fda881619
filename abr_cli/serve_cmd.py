"""`abr serve`: run the decision server (uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from abr_cli.common import user_errors


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8333,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda: where inference runs.")] = "auto",
    models: Annotated[
        Path | None, typer.Option(help="Model registry folder (one checkpoint per version); default: shipped model.")
    ] = None,
    video: Annotated[str, typer.Option(help="'builtin' or a folder of video_size_N files.")] = "builtin",
    workers: Annotated[int, typer.Option(min=1, help="Server processes (each with its own sessions).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve bitrate decisions over HTTP (settings also from ABR_* environment variables)."""
    import uvicorn

    from abr_server.logs import log_config
    from abr_server.settings import Settings

    with user_errors():
        # Options become ABR_* variables so that every worker process builds the same settings.
        os.environ["ABR_DEVICE"] = device
        os.environ["ABR_VIDEO"] = video
        if models is not None:
            if not models.is_dir():
                raise ValueError(f"--models {models}: no such folder")
            os.environ["ABR_MODELS_DIR"] = str(models)
        Settings()  # validate the environment before starting workers
    uvicorn.run("abr_server.main:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, log_config=log_config(log_level))  # fmt: skip
