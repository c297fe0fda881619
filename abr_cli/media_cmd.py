"""``abr media``: make a DASH test asset with ffmpeg, and serve one through a trace-shaped link."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abr_cli.common import console, err_console, user_errors
from abr_common.units import BITS_PER_BYTE, BITS_PER_KBIT

app = typer.Typer(name="media", help="DASH test assets and the trace-shaped segment server.", no_args_is_help=True,
                  add_completion=False)  # fmt: skip


@app.command("make")
def make(
    out: Annotated[Path, typer.Argument(help="Asset folder to create.")],
    duration_s: Annotated[float, typer.Option(min=1, help="Length in seconds (48 segments of 4 s by default).")] = 192,
    max_height: Annotated[int, typer.Option(min=72, help="Cap on the ladder's heights (pixels).")] = 1080,
    fps: Annotated[int, typer.Option(min=1, max=120, help="Frame rate.")] = 24,
    preset: Annotated[str, typer.Option(help="x264 preset (speed vs compression).")] = "veryfast",
    source: Annotated[
        Path | None, typer.Option("--input", help="Encode this video file (default: a generated test pattern).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Encode the simulator's 300-4300 kbit/s ladder as DASH (4 s segments, H.264 + AAC) with ffmpeg."""
    import time

    from abr_server.lab.asset import AssetSpec, make_asset

    with user_errors():
        spec = AssetSpec(duration_s=duration_s, max_height=max_height, fps=fps, preset=preset, source=source)
        started = time.monotonic()
        with console.status(f"encoding {spec.n_segments} segments x {len(spec.bitrates_kbps)} levels with ffmpeg"):
            video = make_asset(spec, out, force=force)
    kbps = (video.chunk_bytes.mean(axis=1) * BITS_PER_BYTE / BITS_PER_KBIT / video.chunk_duration_s).round().astype(int)
    console.print(f"{out}: {video.n_chunks} segments of {video.chunk_duration_s:g} s, ladder "
                  f"{list(video.bitrates_kbps)} kbit/s, measured {kbps.tolist()} kbit/s "
                  f"({time.monotonic() - started:.1f} s)")  # fmt: skip
    console.print(f"serve it: abr serve --media {out} [--link-trace TRACE]   play it: http://127.0.0.1:8333/player")


@app.command("serve")
def serve(
    folder: Annotated[Path, typer.Argument(help="Asset folder (or any folder of files).")],
    trace: Annotated[Path | None, typer.Option(help="Pace responses through this throughput trace.")] = None,
    delay_ms: Annotated[float | None, typer.Option(min=0, help="Delay before every response [default: 80].")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8334,
) -> None:
    """Serve a folder over HTTP through a trace-shaped link (alone; `abr serve --media` mounts it at /media)."""
    import uvicorn

    from abr_server.main import media_app
    from abr_server.settings import Settings

    with user_errors():
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder")
        if trace is not None and not trace.is_file():
            raise ValueError(f"--trace {trace}: no such file")
        extra = {} if delay_ms is None else {"link_delay_ms": delay_ms}
        settings = Settings(media_dir=folder, link_trace=trace, **extra)  # type: ignore[arg-type]
        app_ = media_app(settings)
    shaped = f"paced by {trace.name}" if trace else "unshaped"
    shaped += f", +{settings.media_delay_ms:g} ms per response"
    err_console.print(f"serving {folder} at http://{host}:{port}/ ({shaped})")
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)
