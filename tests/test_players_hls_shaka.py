"""hls.js and Shaka Player beside dash.js: the HLS playlists `abr media make` writes over the DASH
segments, the page and routes for the three players, the emulation's checks of its arguments, and
(where Chromium, ffmpeg and the npm packages exist) a real hls.js and a real Shaka Player session in
headless Chromium asking the server for every segment's level under a varying trace."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from abr_server.api.routes.player import VENDOR_FILES
from abr_server.lab.asset import (
    AAC_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE_HZ,
    HLS_MASTER,
    MANIFEST,
    AssetSpec,
    audio_samples,
    ffmpeg_command,
    make_asset,
)
from abr_server.lab.emulate import PLAYER_MANIFESTS, EmulationError, emulate
from abr_server.main import create_app
from abr_server.settings import Settings
from tests.browsers import browser_missing
from traces.io import save
from traces.trace import Trace

#: The test asset: 4 segments of 2 s (the fallback rule decides for the learned model, trained on 4 s).
SEGMENT_S = 2.0
N_SEGMENTS = 4
LEVELS = 6


def playlist(path: Path) -> list[tuple[float, str]]:
    """(EXTINF seconds, URI) of every segment of an HLS media playlist."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    entries = []
    for i, line in enumerate(lines):
        if line.startswith("#EXTINF:"):
            uri = next(x for x in lines[i + 1 :] if not x.startswith("#"))
            entries.append((float(line.split(":", 1)[1].rstrip(",")), uri))
    return entries


# ---------------------------------------------------------------------------------------- ffmpeg command


def test_ffmpeg_command_writes_hls_playlists_beside_the_dash_manifest() -> None:
    cmd = " ".join(ffmpeg_command(AssetSpec(duration_s=16, max_height=72), Path("out")))
    assert f"-hls_playlist 1 -hls_master_name {HLS_MASTER}" in cmd
    assert cmd.endswith(f"out/{MANIFEST}")
    assert f"atrim=end_sample={749 * AAC_FRAME_SAMPLES},asetpts=PTS+{AAC_FRAME_SAMPLES}/SR/TB[a]" in cmd
    assert "-map [a]" in cmd


@pytest.mark.parametrize("duration_s", [2.0, 8.0, 12.0, 16.0, 192.0, 31.7])
def test_audio_is_whole_aac_frames_that_end_with_the_video(duration_s: float) -> None:
    samples = audio_samples(duration_s)
    assert samples % AAC_FRAME_SAMPLES == 0
    frame_s = AAC_FRAME_SAMPLES / AUDIO_SAMPLE_RATE_HZ
    with_priming_s = samples / AUDIO_SAMPLE_RATE_HZ + frame_s
    assert duration_s - 2 * frame_s < with_priming_s <= duration_s  # never past the video, at most a frame short


# ---------------------------------------------------------------------------------------- the asset's playlists


@pytest.fixture(scope="module")
def asset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (apt-get install ffmpeg)")
    out = tmp_path_factory.mktemp("players") / "asset"
    spec = AssetSpec(duration_s=N_SEGMENTS * SEGMENT_S, segment_s=SEGMENT_S, max_height=72, fps=12, preset="ultrafast")
    make_asset(spec, out)
    return out


def test_hls_playlists_list_the_dash_segments(asset: Path) -> None:
    master = (asset / HLS_MASTER).read_text()
    assert master.count("#EXT-X-STREAM-INF:") == LEVELS
    assert 'TYPE=AUDIO,GROUP-ID="group_A1"' in master
    for level in range(LEVELS):
        media = asset / f"media_{level}.m3u8"
        assert media.name in master
        assert f'#EXT-X-MAP:URI="init-{level}.m4s"' in media.read_text()
        entries = playlist(media)
        assert [uri for _, uri in entries] == [f"chunk-{level}-{n:05d}.m4s" for n in range(1, N_SEGMENTS + 1)]
        assert all((asset / uri).is_file() for _, uri in entries)  # the same files the MPD points at
        assert [d for d, _ in entries] == pytest.approx([SEGMENT_S] * N_SEGMENTS)
        sizes = [int(b) for b in (asset / f"video_size_{level}").read_text().split()]
        assert sizes == [(asset / uri).stat().st_size for _, uri in entries]
    assert json.loads((asset / "asset.json").read_text())["hls_master"] == HLS_MASTER


def test_audio_segments_end_at_or_after_their_video_segments(asset: Path) -> None:
    # hls.js schedules video by the buffer both tracks cover: audio ending a few ms short of a video
    # segment made it fetch that video segment again after a level switch.
    audio = playlist(asset / f"media_{LEVELS}.m3u8")
    assert len(audio) == N_SEGMENTS  # and no sliver of a segment past the video's end
    ends = np.cumsum([d for d, _ in audio])
    assert np.all(ends[:-1] >= SEGMENT_S * np.arange(1, N_SEGMENTS) - 1e-6)
    assert N_SEGMENTS * SEGMENT_S - 0.05 < ends[-1] <= N_SEGMENTS * SEGMENT_S + 1e-6


def test_media_serves_hls_playlists(asset: Path) -> None:
    with TestClient(create_app(Settings(media_dir=asset, telemetry_db=None))) as client:  # type: ignore[arg-type]
        reply = client.get(f"/media/{HLS_MASTER}")
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert reply.text.startswith("#EXTM3U")


# ---------------------------------------------------------------------------------------- page and routes


def test_page_offers_dashjs_hlsjs_and_shaka(tmp_path: Path) -> None:
    settings_ = Settings(telemetry_db=None, player_vendor_dir=tmp_path / "none")  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as client:
        page = client.get("/player").text
        for player, scripts in {
            "dashjs": "/player/vendor/dash.all.min.js /player/static/resin-abr.js",
            "hlsjs": "/player/vendor/hls.min.js /player/static/resin-abr-hls.js",
            "shaka": "/player/vendor/shaka-player.compiled.js /player/static/resin-abr-shaka.js",
        }.items():
            assert f'value="{player}"' in page
            assert f'data-scripts="{scripts}"' in page
        assert "/player/static/resin-abr-core.js" in page
        core = client.get("/player/static/resin-abr-core.js").text
        assert "/v1/sessions/" in core
        assert "bufferBased" in core
        assert "abrControllerClass" in client.get("/player/static/resin-abr-hls.js").text
        assert "abrFactory" in client.get("/player/static/resin-abr-shaka.js").text
        for name in ("hls.min.js", "shaka-player.compiled.js"):
            missing = client.get(f"/player/vendor/{name}")
            assert missing.status_code == 503
            assert "npm ci" in missing.json()["detail"]


def test_every_player_has_its_library_and_manifest() -> None:
    assert {"dash.all.min.js", "hls.min.js", "shaka-player.compiled.js"} <= set(VENDOR_FILES)
    assert PLAYER_MANIFESTS == {"dashjs": MANIFEST, "hlsjs": HLS_MASTER, "shaka": MANIFEST}


def test_emulate_refuses_a_bad_player_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("<MPD/>")
    trace = save(Trace("t", np.array([0.0, 1.0]), np.array([1.0, 1.0])), tmp_path / "t.txt")
    with pytest.raises(EmulationError, match="unknown player 'vlc': one of dashjs, hlsjs, shaka"):
        emulate(tmp_path, [trace], ["bba"], tmp_path / "out", player="vlc")
    with pytest.raises(EmulationError, match=rf"no {re.escape(HLS_MASTER)} for hlsjs"):
        emulate(tmp_path, [trace], ["bba"], tmp_path / "out", player="hlsjs")
    with pytest.raises(EmulationError, match=r"dash\.js's own ABR: it plays only with player dashjs"):
        emulate(tmp_path, [trace], ["dashjs"], tmp_path / "out", player="shaka")
    assert not (tmp_path / "out").exists()


def test_abr_emulate_names_the_playlist_a_player_needs_and_writes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from abr_cli.main import app

    (tmp_path / MANIFEST).write_text("<MPD/>")  # a DASH-only asset
    trace = save(Trace("t", np.array([0.0, 1.0]), np.array([1.0, 1.0])), tmp_path / "t.txt")
    out = tmp_path / "out"
    args = ["emulate", "--asset", str(tmp_path), "--trace", str(trace), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--player", "hlsjs"])
    assert result.exit_code == 2
    assert f"no {HLS_MASTER} there for hlsjs" in result.output
    result = CliRunner().invoke(app, [*args, "--player", "vlc"])
    assert result.exit_code == 2
    assert "vlc" in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------- real browsers


BROWSER_MISSING = browser_missing()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")
@pytest.mark.parametrize("player", ["hlsjs", "shaka"])
def test_player_plays_the_servers_levels_under_a_varying_trace(player: str, asset: Path, tmp_path: Path) -> None:
    # 2 s at 1.2 Mbit/s, 2 s at 6 Mbit/s, repeating: the buffer-based rule moves with the buffer.
    times = [float(t) for t in range(0, 61)]
    varying = save(Trace("t", np.array(times), np.array([1.2 if (t // 2) % 2 == 0 else 6.0 for t in times])),
                   tmp_path / "varying.txt")  # fmt: skip
    [result] = emulate(asset, [varying], ["bba"], tmp_path / "emu", player=player)
    outcome, server = result.player, result.server
    assert server is not None
    assert result.player_name == player
    assert len(outcome.levels) == N_SEGMENTS  # the whole asset was played
    assert outcome.server_share >= 0.95  # segments 1..N-1 carried the server's decisions
    assert server.rows == N_SEGMENTS  # one report per segment
    assert server.levels_agree == 1.0  # the player reported the levels it fetched
    assert server.decisions_followed >= 0.95  # and fetched the levels it was told
    state = json.loads((tmp_path / "emu" / "sessions" / f"varying.txt.{player}.bba" / "player.json").read_text())
    assert state["player"] == player
    assert [s["index"] for s in state["segments"]] == list(range(N_SEGMENTS))  # each segment fetched once
