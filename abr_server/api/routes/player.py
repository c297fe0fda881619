"""The browser side: the /player demo page, the rules that play the server's decisions, their libraries.

``resin-abr-core.js`` is what every player shares (reports, decisions, the fallback rule, stall
tracking); ``resin-abr.js`` plugs it into dash.js (a custom ABR rule), ``resin-abr-hls.js`` into hls.js
(an ``abrController`` class) and ``resin-abr-shaka.js`` into Shaka Player (an AbrManager given as
``abrFactory``).

dash.js, hls.js, Shaka Player and Chart.js come from npm (``abr_server/player/package.json``, installed
by ``make install``) and are served from that ``node_modules`` (or ``ABR_PLAYER_VENDOR_DIR``); nothing
third-party is kept in the repository. Without them ``/player/vendor/*`` answers 503 naming the
command that installs them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel

from abr_server.deps import ServiceDep, SettingsDep
from policy.classic import BBAConfig
from simulator.link import LinkConfig
from simulator.reference import DEFAULT_INITIAL_QUALITY

PLAYER_DIR = Path(__file__).resolve().parents[2] / "player"
STATIC_DIR = PLAYER_DIR / "static"
#: The browser libraries the page loads, by the name it loads them under, as paths inside node_modules.
VENDOR_FILES = {
    "dash.all.min.js": "dashjs/dist/modern/umd/dash.all.min.js",
    "hls.min.js": "hls.js/dist/hls.min.js",
    "shaka-player.compiled.js": "shaka-player/dist/shaka-player.compiled.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
}
INSTALL_HINT = "run `make install` (or `npm ci --prefix abr_server/player`) to install the player libraries"

router = APIRouter(prefix="/player", tags=["player"])


class PlayerConfig(BaseModel):
    """What the page and the rule need to know about the served video and the simulator's conventions."""

    bitrates_kbps: list[int]
    chunk_duration_s: float
    n_chunks: int
    default_quality: int
    max_buffer_s: float
    fallback_reservoir_s: float
    fallback_cushion_s: float
    policy: str


def vendor_dir(configured: Path | None) -> Path:
    """Where the npm packages are: the configured folder or the package's own node_modules."""
    return configured if configured is not None else PLAYER_DIR / "node_modules"


@router.get("", include_in_schema=False)
async def page() -> FileResponse:
    """The demo page (``?player=dashjs|hlsjs|shaka&src=MANIFEST&abr=server|native&sid=ID``)."""
    return FileResponse(STATIC_DIR / "player.html", headers={"cache-control": "no-store"})


@router.get("/config.json", response_model=PlayerConfig)
async def config(service: ServiceDep) -> PlayerConfig:
    """Ladder, chunk duration, first-chunk level, buffer cap and fallback rule of this server."""
    video, bba, link = service.video, BBAConfig(), LinkConfig()
    return PlayerConfig(
        bitrates_kbps=[int(b) for b in video.bitrates_kbps], chunk_duration_s=video.chunk_duration_s,
        n_chunks=video.n_chunks, default_quality=DEFAULT_INITIAL_QUALITY, max_buffer_s=link.max_buffer_s,
        fallback_reservoir_s=bba.reservoir_s, fallback_cushion_s=bba.cushion_s, policy=service.settings.policy,
    )  # fmt: skip


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    """The page's own scripts and styles."""
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no player file {name!r}")
    return FileResponse(path, headers={"cache-control": "no-cache"})


@router.get("/vendor/{name}", include_in_schema=False)
async def vendor(name: str, settings: SettingsDep) -> FileResponse:
    """The player libraries and Chart.js from npm."""
    inside = VENDOR_FILES.get(name)
    if inside is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no vendor file {name!r}")
    path = vendor_dir(settings.player_vendor_dir) / inside
    if not path.is_file():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"{path} is missing: {INSTALL_HINT}")
    return FileResponse(path, media_type="text/javascript", headers={"cache-control": "max-age=3600"})
