"""Real players: trace capacity, the shaped link, the segment server, the player routes, the emulation
bookkeeping, ffmpeg assets, and (where Chromium, ffmpeg and the npm packages exist) a real dash.js
session in headless Chromium through the server under a varying trace."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from abr_server.api.routes.player import VENDOR_FILES
from abr_server.lab.asset import AssetSpec, ffmpeg_command, make_asset
from abr_server.lab.emulate import PlayerOutcome, emulate, server_view
from abr_server.lab.netns import MIN_RATE_KBIT, KernelShaper, KernelShapingError, private_netns, rate_schedule
from abr_server.main import create_app
from abr_server.settings import Settings
from abr_server.shaping import SLICE_BYTES, ShapedLink
from abr_server.telemetry import COLUMNS, SCHEMA
from simulator.capacity import TraceCapacity
from simulator.qoe import QoEConfig
from simulator.video import Video
from tests.browsers import browser_missing
from traces.io import save
from traces.trace import Trace

MBPS = 1e6 / 8  # bytes per second in one Mbit/s


def trace(times: list[float], mbps: list[float]) -> Trace:
    return Trace("t", np.array(times), np.array(mbps))


# ---------------------------------------------------------------------------------------- capacity


def test_capacity_hand_computed() -> None:
    # Intervals: [0, 1] at 8 Mbit/s (1e6 B/s), [1, 3] at 0, [3, 4] at 16 Mbit/s; payload fraction 0.5.
    cap = TraceCapacity(trace([0, 1, 3, 4], [99, 8, 0, 16]), 0.5)
    assert cap.bytes_by(0.5) == pytest.approx(250_000)
    assert cap.bytes_by(2.0) == pytest.approx(500_000)
    assert cap.bytes_by(3.5) == pytest.approx(1_000_000)
    assert cap.bytes_by(4.0) == pytest.approx(1_500_000)
    assert cap.bytes_by(4.5) == pytest.approx(1_750_000)  # the second cycle starts again with interval 1
    assert cap.time_for(500_000) == pytest.approx(1.0)  # the earliest time, not the end of the zero gap
    assert cap.time_for(750_000) == pytest.approx(3.25)
    assert cap.time_for(1_500_000 + 250_000) == pytest.approx(4.5)
    assert cap.rate_at(0.5) == pytest.approx(500_000)
    assert cap.rate_at(2.0) == 0.0


def test_capacity_first_pass_starts_at_the_first_sample() -> None:
    # times_s[0] = 2: the first pass covers [2, 6]; later cycles cover [0, 6] (the simulator's convention).
    cap = TraceCapacity(trace([2, 4, 6], [1, 8, 16]), 1.0)
    assert cap.bytes_by(2.0) == pytest.approx(2 * MBPS * 8)  # [2, 4] at 8 Mbit/s
    assert cap.bytes_by(4.0) == pytest.approx(2 * MBPS * 8 + 2 * MBPS * 16)
    assert cap.bytes_by(5.0) == pytest.approx(2 * MBPS * 8 + 2 * MBPS * 16 + 1 * MBPS * 8)  # clock 0..1 at 8


@settings(max_examples=200, deadline=None)
@given(
    rates=st.lists(st.sampled_from([0.0, 0.3, 1.0, 4.5, 12.0]), min_size=2, max_size=8).filter(
        lambda r: any(x > 0 for x in r)
    ),
    target=st.floats(1.0, 5e7),
)
def test_time_for_inverts_bytes_by(rates: list[float], target: float) -> None:
    times = list(np.arange(len(rates) + 1, dtype=float))
    cap = TraceCapacity(trace(times, [1.0, *rates]), 0.95)
    t = cap.time_for(target)
    assert cap.bytes_by(t) == pytest.approx(target, rel=1e-9, abs=1e-3)
    assert cap.bytes_by(max(t - 1e-6, 0.0)) < target + 1e-3  # and no earlier time delivers it


# ---------------------------------------------------------------------------------------- the shaped link


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_shaped_link_serialises_reservations_and_loses_idle_capacity() -> None:
    clock = FakeClock()
    link = ShapedLink(TraceCapacity(trace([0, 10], [8, 8]), 1.0), clock=clock)  # 1e6 B/s
    assert link.reserve(500_000) == pytest.approx(0.5)
    assert link.reserve(500_000) == pytest.approx(1.0)  # queued behind the first
    clock.now += 3.0  # the link idles from 1 s to 3 s: that capacity is gone
    assert link.reserve(1_000_000) == pytest.approx(4.0)
    assert link.bytes_sent == 2_000_000


def test_shaped_link_burst_lets_a_fresh_transfer_use_saved_capacity() -> None:
    clock = FakeClock()
    link = ShapedLink(TraceCapacity(trace([0, 10], [8, 8]), 1.0), burst_bytes=200_000, clock=clock)
    link.start()
    clock.now += 2.0
    assert link.reserve(200_000) == pytest.approx(2.0)  # all of it from the bucket


def test_shaped_link_rejects_bad_settings() -> None:
    cap = TraceCapacity(trace([0, 1], [1, 1]), 1.0)
    with pytest.raises(ValueError, match="burst_bytes"):
        ShapedLink(cap, burst_bytes=-1)
    with pytest.raises(ValueError, match="payload_fraction"):
        TraceCapacity(trace([0, 1], [1, 1]), 0.0)


def test_concurrent_transfers_share_the_link() -> None:
    # Two 160 KiB transfers at 16 Mbit/s (2 MB/s) in parallel: both finish after ~0.16 s, not 0.08 and 0.16.
    link = ShapedLink(TraceCapacity(trace([0, 100], [16, 16]), 1.0))

    async def transfer() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(10):
            await link.transmit(SLICE_BYTES)
        return loop.time() - start

    async def both() -> list[float]:
        return list(await asyncio.gather(transfer(), transfer()))

    first, second = asyncio.run(both())
    total_s = 2 * 10 * SLICE_BYTES / 2e6
    assert first >= total_s * 0.9
    assert second >= total_s * 0.9


# ---------------------------------------------------------------------------------------- segment server


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "asset"
    root.mkdir()
    (root / "manifest.mpd").write_text("<MPD/>")
    (root / "chunk-0-00001.m4s").write_bytes(bytes(range(256)) * 200)
    (root / ".hidden").write_text("no")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_media_is_served_with_types_and_no_caching(media_dir: Path, tmp_path: Path) -> None:
    settings_ = Settings(media_dir=media_dir, telemetry_db=None)  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as client:
        mpd = client.get("/media/manifest.mpd")
        assert mpd.status_code == 200
        assert mpd.text == "<MPD/>"
        assert mpd.headers["content-type"] == "application/dash+xml"
        seg = client.get("/media/chunk-0-00001.m4s")
        assert seg.content == (media_dir / "chunk-0-00001.m4s").read_bytes()
        assert seg.headers["cache-control"] == "no-store"
        assert seg.headers["timing-allow-origin"] == "*"
        assert client.head("/media/manifest.mpd").headers["content-length"] == "6"
        for bad in ("/media/../secret.txt", "/media/%2e%2e/secret.txt", "/media/.hidden", "/media/", "/media/nope"):
            assert client.get(bad).status_code == 404, bad
        assert client.post("/media/manifest.mpd").status_code == 405


def test_shaped_media_takes_as_long_as_the_trace_says(media_dir: Path, tmp_path: Path) -> None:
    path = save(trace([0, 100], [4, 4]), tmp_path / "slow.txt")  # 4 Mbit/s * 0.95 payload
    settings_ = Settings(media_dir=media_dir, link_trace=path, link_delay_ms=50, telemetry_db=None)  # type: ignore[arg-type]
    app = create_app(settings_)
    with TestClient(app) as client:
        import time

        start = time.monotonic()
        seg = client.get("/media/chunk-0-00001.m4s")
        elapsed = time.monotonic() - start
    expected = 0.05 + len(seg.content) / (4 * MBPS * 0.95)
    assert elapsed >= expected * 0.95
    assert app.state.media.link.bytes_sent == len(seg.content)


def test_link_trace_needs_a_media_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="media_dir"):
        Settings(link_trace=tmp_path / "t.txt")  # type: ignore[arg-type]


def test_media_delay_defaults_to_the_simulator_rtt_only_when_shaped(tmp_path: Path) -> None:
    assert Settings(media_dir=tmp_path).media_delay_ms == 0.0  # type: ignore[arg-type]
    assert Settings(media_dir=tmp_path, link_trace=tmp_path / "t").media_delay_ms == 80.0  # type: ignore[arg-type]
    assert Settings(media_dir=tmp_path, link_delay_ms=5).media_delay_ms == 5.0  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- player routes


def test_player_page_config_and_scripts(tmp_path: Path) -> None:
    settings_ = Settings(telemetry_db=None, player_vendor_dir=tmp_path / "none")  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as client:
        page = client.get("/player")
        assert page.status_code == 200
        assert "resin-abr.js" in page.text
        config = client.get("/player/config.json").json()
        assert config["bitrates_kbps"] == [300, 750, 1200, 1850, 2850, 4300]
        assert config["default_quality"] == 1
        assert config["max_buffer_s"] == 60.0
        assert (config["fallback_reservoir_s"], config["fallback_cushion_s"]) == (5.0, 10.0)
        assert "addABRCustomRule" in client.get("/player/static/resin-abr.js").text
        assert client.get("/player/static/nope.js").status_code == 404
        missing = client.get("/player/vendor/dash.all.min.js")
        assert missing.status_code == 503
        assert "npm" in missing.json()["detail"]
        assert client.get("/player/vendor/evil.js").status_code == 404


def test_vendor_files_are_served_from_node_modules(tmp_path: Path) -> None:
    for inside in VENDOR_FILES.values():
        (tmp_path / inside).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / inside).write_text("// lib")
    settings_ = Settings(telemetry_db=None, player_vendor_dir=tmp_path)  # type: ignore[arg-type]
    with TestClient(create_app(settings_)) as client:
        reply = client.get("/player/vendor/chart.umd.min.js")
        assert reply.status_code == 200
        assert reply.text == "// lib"


# ---------------------------------------------------------------------------------------- emulation bookkeeping

VIDEO4 = Video((300, 750, 1200, 1850, 2850, 4300), 4.0, np.full((6, 4), 100_000, dtype=np.int64), name="v4")


def player_state(levels: list[int], ends: list[float], stalls: list[tuple[float, float]]) -> dict[str, object]:
    segments = [
        {"index": i, "level": q, "source": "initial" if i == 0 else "server", "end_ms": e,
         "request_start_ms": e - 500.0, "buffer_s": 4.0}
        for i, (q, e) in enumerate(zip(levels, ends, strict=True))
    ]  # fmt: skip
    return {"attachedMs": 0.0, "firstPlayingMs": 1500.0, "ended": True, "segments": segments,
            "stalls": [{"start_ms": a, "end_ms": b} for a, b in stalls]}  # fmt: skip


def test_player_outcome_attributes_stalls_to_the_segment_that_ended_them() -> None:
    # Segments arrive at 1000, 5000, 9000, 13000 ms; stalls [4000, 4600] (before segment 1 arrived) and
    # [8800, 9400] (200 ms for segment 2, 400 ms after it: counted on segment 3).
    state = player_state([1, 2, 2, 0], [1000, 5000, 9000, 13000], [(4000, 4600), (8800, 9400)])
    out = PlayerOutcome.from_state(state, VIDEO4)
    assert out.rebuffer_s == pytest.approx([1.5, 0.6, 0.2, 0.4])  # startup 1.5 s on segment 0
    assert out.stall_count == 2
    assert out.stall_s == pytest.approx(1.2)
    # QoE_lin of segments 1..3: (1.2 - 4.3*0.6 - 0.45) + (1.2 - 4.3*0.2 - 0) + (0.3 - 4.3*0.4 - 0.9), mean.
    expected = ((1.2 - 2.58 - 0.45) + (1.2 - 0.86) + (0.3 - 1.72 - 0.9)) / 3
    assert out.score == pytest.approx(expected)
    assert out.switches == 2
    assert out.server_share == 1.0
    assert QoEConfig().rebuffer_weight == 4.3


def test_player_outcome_needs_every_segment() -> None:
    state = player_state([1, 2], [1000, 5000], [])
    with pytest.raises(Exception, match=r"segments \[2, 3\]"):
        PlayerOutcome.from_state(state, VIDEO4)


def test_server_view_compares_the_telemetry_with_the_player(tmp_path: Path) -> None:
    state = player_state([1, 2, 2, 0], [1000, 5000, 9000, 13000], [(4000, 4600)])
    outcome = PlayerOutcome.from_state(state, VIDEO4)
    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(SCHEMA)
        # The decision for segment 3 (1) was not followed: the player fetched level 0.
        rows = [(0, 1, 2, 0.0, 1000), (1, 2, 2, 600.0, 5000), (2, 2, 1, 600.0, 9000)]
        for index, quality, decided, rebuf, end in rows:
            values = dict.fromkeys(COLUMNS)
            values.update(session_id="s", chunk_index=index, quality=quality, decided_quality=decided,
                          rebuffer_ms=rebuf, end_ms=end)  # fmt: skip
            con.execute(f"INSERT INTO chunks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [values[c] for c in COLUMNS])  # fmt: skip
    view = server_view(db, "s", outcome, state)
    assert view.rows == 3
    assert view.levels_agree == 1.0
    assert view.decisions_followed == pytest.approx(2 / 3)
    assert (view.rebuffer_ms_logged, view.rebuffer_ms_player) == (600.0, 600.0)


# ---------------------------------------------------------------------------------------- ffmpeg assets


def test_ffmpeg_command_encodes_the_ladder_as_cbr_dash() -> None:
    cmd = " ".join(ffmpeg_command(AssetSpec(duration_s=8, max_height=360), Path("out")))
    for level, kbps in enumerate((300, 750, 1200, 1850, 2850, 4300)):
        assert f"-b:v:{level} {kbps}k -minrate:v:{level} {kbps}k -maxrate:v:{level} {kbps}k" in cmd
    assert "-seg_duration 4.0" in cmd
    assert "-g 96 -keyint_min 96" in cmd
    assert "nal-hrd=cbr" in cmd
    assert "scale=-2:240" in cmd
    assert "scale=-2:360" in cmd
    assert "scale=-2:1080" not in cmd
    assert AssetSpec(duration_s=8).n_segments == 2


def test_bad_asset_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter than one segment"):
        AssetSpec(duration_s=2)
    with pytest.raises(ValueError, match="no such file"):
        AssetSpec(source=tmp_path / "missing.mp4")


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg)"
)


@needs_ffmpeg
def test_make_asset_writes_dash_and_exact_chunk_sizes(tmp_path: Path) -> None:
    out = tmp_path / "asset"
    video = make_asset(AssetSpec(duration_s=8, max_height=72, fps=12, preset="ultrafast"), out)
    assert video.n_chunks == 2
    assert video.bitrates_kbps == (300, 750, 1200, 1850, 2850, 4300)
    sizes = [(out / f"chunk-{level}-{n:05d}.m4s").stat().st_size for level in range(6) for n in (1, 2)]
    assert video.chunk_bytes.ravel().tolist() == sizes
    kbps = video.chunk_bytes.mean(axis=1) * 8 / 1000 / 4.0
    assert np.allclose(kbps[2:], video.bitrates_kbps[2:], rtol=0.1)  # CBR with filler: at the ladder's rate
    assert "<MPD" in (out / "manifest.mpd").read_text()
    with pytest.raises(ValueError, match="exists"):
        make_asset(AssetSpec(duration_s=8), out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


# ---------------------------------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def tiny_asset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("player") / "asset"
    make_asset(AssetSpec(duration_s=16, max_height=72, fps=12, preset="ultrafast"), out)  # 4 segments of 4 s
    return out


@pytest.mark.browser
@pytest.mark.slow
def test_dashjs_plays_through_the_server_under_a_varying_trace(tiny_asset: Path, tmp_path: Path) -> None:
    # 2 s at 1.2 Mbit/s, 2 s at 6 Mbit/s, repeating: the learned policy has to move.
    times = [float(t) for t in range(0, 61)]
    varying = save(trace(times, [1.2 if (t // 2) % 2 == 0 else 6.0 for t in times]), tmp_path / "varying.txt")
    [result] = emulate(tiny_asset, [varying], ["learned"], tmp_path / "emu")
    player, server = result.player, result.server
    assert server is not None
    assert result.simulated is not None
    assert player.server_share >= 0.95  # segments 1..N-1 carried the server's decisions
    assert len(player.levels) == 4  # the whole asset was played
    assert server.rows == 4
    assert server.levels_agree == 1.0
    assert server.decisions_followed >= 0.95
    assert abs(server.rebuffer_ms_logged - server.rebuffer_ms_player) <= 250  # stalls agree
    saved = json.loads((tmp_path / "emu" / "sessions" / "varying.txt.learned" / "result.json").read_text())
    assert saved["player"]["levels"] == player.levels


# ---------------------------------------------------------------------------------------- kernel shaping


def test_rate_schedule_follows_the_trace_in_kbit() -> None:
    schedule = rate_schedule(trace([1, 2, 4, 5], [9, 0.5, 0.0, 12.3456]))
    assert schedule == [(0.0, 500), (1.0, MIN_RATE_KBIT), (3.0, 12346)]  # from the first sample; never zero


def test_kernel_shaper_changes_the_rate_along_the_trace_and_loops() -> None:
    issued: list[list[str]] = []
    shaper = KernelShaper(trace([0, 0.05, 0.1], [1, 2, 3]), run=issued.append)
    shaper.start()
    import time

    deadline = time.monotonic() + 10
    while sum("rate" in cmd for cmd in issued) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    shaper.stop()
    rates = [cmd[cmd.index("rate") + 1] for cmd in issued if "rate" in cmd]
    assert rates[:5] == ["2000kbit", "3000kbit", "2000kbit", "3000kbit", "2000kbit"]
    assert issued[-1] == ["tc", "qdisc", "del", "dev", "lo", "root"]


def test_kernel_shaper_refuses_a_shared_network_namespace() -> None:
    if private_netns():
        pytest.skip("this test process already runs in a private network namespace")
    if shutil.which("tc") is None or shutil.which("ip") is None:
        pytest.skip("tc/ip not installed (iproute2)")
    issued: list[list[str]] = []
    with pytest.raises(KernelShapingError, match="private network namespace"):
        KernelShaper(trace([0, 1], [1, 1]), run=issued.append).setup()
    assert issued == []  # nothing was touched


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare -n or tc not available (needs root or user namespaces)")
def test_kernel_shaper_sets_tbf_on_the_private_loopback(tmp_path: Path) -> None:
    path = save(trace([0, 10], [3, 3]), tmp_path / "t.txt")
    script = (
        "from abr_server.lab.netns import KernelShaper; from traces.io import load_file; import subprocess; "
        f"s = KernelShaper(load_file({str(path)!r})); s.setup(); "
        "print(subprocess.run(['tc', 'qdisc', 'show', 'dev', 'lo'], capture_output=True, text=True).stdout); "
        "print(subprocess.run(['ip', 'link', 'show', 'lo'], capture_output=True, text=True).stdout)"
    )
    done = subprocess.run(["unshare", "-n", "--", sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tbf" in done.stdout
    assert "rate 3Mbit" in done.stdout
    assert "mtu 1500" in done.stdout
