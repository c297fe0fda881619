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
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda: where inference runs [default: auto].")] = None,
    models: Annotated[
        Path | None, typer.Option(help="Model registry folder (one checkpoint per version); default: shipped model.")
    ] = None,
    video: Annotated[
        str | None,
        typer.Option(help="'builtin', a folder of video_size_N files, or an asset folder [default: builtin]."),
    ] = None,
    also_video: Annotated[
        list[str] | None,
        typer.Option(
            "--also-video",
            help="Another video served by name, NAME=FOLDER (repeatable); a report names it in its 'video' field.",
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="'learned' or a classic policy spec (bba, robustmpc, ...) [default: learned].")
    ] = None,
    media: Annotated[
        Path | None, typer.Option(help="Serve this DASH asset folder at /media (and use it as --video unless given).")
    ] = None,
    link_trace: Annotated[
        Path | None, typer.Option(help="Pace /media through this throughput trace (shared by all connections).")
    ] = None,
    link_delay_ms: Annotated[
        float | None, typer.Option(min=0, help="Delay added before every /media response [default: 80].")
    ] = None,
    telemetry_db: Annotated[
        Path | None, typer.Option(help="SQLite telemetry file [default: abr-telemetry.sqlite].")
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Origin whose pages may call the player endpoints (repeatable; '' for none) [default: *]."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (each with its own sessions).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve bitrate decisions over HTTP (settings also from ABR_* environment variables; options win)."""
    from abr_server.run import preflight, run_server
    from abr_server.settings import Settings

    with user_errors():
        if models is not None and not models.is_dir():
            raise ValueError(f"--models {models}: no such folder")
        if media is not None and not media.is_dir():
            raise ValueError(f"--media {media}: no such folder")
        if link_trace is not None and not link_trace.is_file():
            raise ValueError(f"--link-trace {link_trace}: no such file")
        if media is not None and video is None:
            video = str(media)
        # Options become ABR_* variables so that every worker process builds the same settings.
        given = {"DEVICE": device, "VIDEO": video, "POLICY": policy, "MODELS_DIR": models, "MEDIA_DIR": media,
                 "LINK_TRACE": link_trace, "LINK_DELAY_MS": link_delay_ms, "TELEMETRY_DB": telemetry_db}  # fmt: skip
        if also_video is not None:
            given["VIDEOS"] = ",".join(also_video)
        if cors_origin is not None:
            given["CORS_ORIGINS"] = ",".join(cors_origin)
        for name, value in given.items():
            if value is not None:
                os.environ[f"ABR_{name}"] = str(value)
        preflight(Settings(), host, port)  # validate the environment before starting workers
    run_server(host=host, port=port, workers=workers, log_level=log_level)
